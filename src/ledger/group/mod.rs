//! Group commit: the hot operations of a transaction's life — reserving it
//! (with its first attempt) and finishing it (commit or release, with the
//! attempt's outcome) — wait in bounded queues and are applied in batches, one
//! database transaction per batch.
//!
//! Each queue has one writer task. It takes whatever is queued, up to
//! `ledger.batch_max` operations, applies it, answers every caller, and comes
//! back for more: a batch flushes when it is full or when the database is
//! free, and with nothing else queued an operation goes at once (no timer: a
//! lone client never waits for company).
//!
//! **How a batch is applied.** Reads first, then a plan computed in memory by
//! the same rules a one-at-a-time ledger follows, then writes:
//! - *reserve*: lock the accounts involved (ascending id), read which of
//!   the clients' ids already exist, then walk the operations in arrival order with a running
//!   balance per account, so exactly the prefix that fits is admitted and the
//!   rest is stored `declined / insufficient_funds`; take the admitted amounts
//!   off (one guarded update per account), insert every new row and the first
//!   attempts.
//! - *finish*: lock the transaction rows (ascending reference), then the accounts
//!   (ascending id); store the final rows with their responses, add the
//!   credits per account (one update per account per batch, so settlement
//!   accounts stop being hot rows), insert the postings and the attempts'
//!   outcomes.
//!
//! **Invariants.** Every lock order is the ledger's one order (transaction
//! rows, then accounts by id), so batches cannot deadlock each other, the
//! one-at-a-time paths or the reconciler; a conflict the database still
//! reports reruns the whole batch (`database.conflict_retries_max`). A batch
//! that fails fails whole — nothing is half-applied — and each caller gets the
//! truthful answer (`LedgerError::Unavailable`). The database constraints
//! (`balance >= 0`, primary keys) stay the last line of defence: a planning
//! bug fails a batch, it cannot overdraw. Postgres applies a batch with
//! set-based statements (`UNNEST` of arrays); SQLite, in-process, with one
//! statement per row inside one write transaction.

mod postgres;
mod sqlite;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec};
use std::sync::Arc;

use sqlx::Connection;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::sql::{
    AccountRow, Fail, SqlBackend, check_destination, check_owned, check_spendable, new_record,
    now_ms,
};
use super::{AttemptOutcome, LedgerError, Render, Reserved, StoredResponse, TransactionRecord};
use crate::config::DatabaseConfig;
use crate::domain::{
    AccountId, ClientId, Currency, GatewayRef, Movement, ReleaseReason, SwitchName, TransactionId,
    TransactionRequest, TxKind, TxStatus,
};

/// The bounds of group commit, from `[ledger]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// Most operations applied in one database transaction.
    pub batch_max: usize,
    /// Most operations waiting in each queue (reserve, finish).
    pub queue_max: usize,
    /// Longest wait for room in a full queue before answering unavailable.
    pub queue_wait: Duration,
    /// Batches of each queue applied at once (one writer task each).
    pub writers: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            batch_max: 256,
            queue_max: 8192,
            queue_wait: Duration::from_millis(1000),
            writers: 1,
        }
    }
}

/// Which queue a batch came from: a bounded label.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Reserve,
    Finish,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Reserve => "reserve",
            Kind::Finish => "finish",
        }
    }
}

/// How a finished transaction ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The switch approved it: complete the movement.
    Commit {
        switch: SwitchName,
        reference: String,
    },
    /// Give the held money back and store the status the reason implies.
    Release { reason: ReleaseReason },
}

impl Decision {
    /// The final status the transaction takes.
    fn target(&self) -> TxStatus {
        match self {
            Decision::Commit { .. } => TxStatus::Committed,
            Decision::Release { reason } => reason.status(),
        }
    }
}

/// How the attempt that decided a transaction ended, stored with the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd {
    pub attempt_no: u32,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

pub(super) struct ReserveOp {
    client: ClientId,
    req: TransactionRequest,
    /// The switch the first attempt goes to, recorded in the same batch.
    first_attempt: Option<SwitchName>,
    render: Render,
    reply: oneshot::Sender<Result<Reserved, LedgerError>>,
}

pub(super) struct FinishOp {
    gateway_ref: GatewayRef,
    decision: Decision,
    attempt: Option<AttemptEnd>,
    /// A reconciler's lease token the row must still carry.
    fence: Option<super::LeaseToken>,
    render: Render,
    reply: oneshot::Sender<Result<TransactionRecord, LedgerError>>,
}

/// The backend a writer applies batches to.
#[derive(Clone)]
pub(super) enum Store {
    Postgres(super::postgres::PgLedger),
    Sqlite(super::sqlite::SqliteLedger),
}

/// The queues' sending ends, shared by every clone of the ledger. The writer
/// tasks end when the last clone is dropped.
pub(super) struct Group {
    reserves: mpsc::Sender<ReserveOp>,
    finishes: mpsc::Sender<FinishOp>,
    queue_wait: Duration,
    metrics: GroupMetrics,
}

/// Batch sizes and batch latency, by queue; registered on `/metrics` by the
/// application.
#[derive(Clone)]
pub(super) struct GroupMetrics {
    pub(super) batch_size: HistogramVec,
    pub(super) batch_duration: HistogramVec,
}

impl GroupMetrics {
    fn new() -> Self {
        let sizes = [
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ];
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Self {
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "ledger_batch_size",
                    "Operations applied together in one database transaction, by queue (reserve, finish).",
                )
                .buckets(sizes.to_vec()),
                &["queue"],
            )
            .expect("valid metric"),
            batch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ledger_batch_duration_seconds",
                    "Time to apply one batch (all tries), by queue (reserve, finish).",
                )
                .buckets(seconds.to_vec()),
                &["queue"],
            )
            .expect("valid metric"),
        }
    }
}

impl Group {
    /// Starts the writer tasks on the current runtime (SQLite: its one
    /// connection, for `sqlite::memory:`, is the request path's too).
    pub(super) fn start(store: Store, cfg: GroupConfig, retries_max: u32) -> Self {
        let (group, queues, writer) = Self::queues(store, cfg, retries_max);
        for _ in 0..cfg.writers.max(1) {
            tokio::spawn(writer.clone().run(queues.reserves.clone()));
            tokio::spawn(writer.clone().run(queues.finishes.clone()));
        }
        group
    }

    /// Postgres: the writers get an OS thread, a single-threaded runtime and
    /// a pool (`writers × 2` connections) of their own. On the request
    /// path's runtime a writer's socket readiness waits behind every
    /// connection task and is polled only between them; a batch makes five
    /// round trips, and under load each waited milliseconds there. The
    /// thread ends when the last clone of the ledger is gone.
    pub(super) async fn start_dedicated(
        db: &DatabaseConfig,
        cfg: GroupConfig,
    ) -> Result<Self, LedgerError> {
        let writers = cfg.writers.max(1);
        let mut db = db.clone();
        db.connections_max = u32::try_from(writers * 2).unwrap_or(u32::MAX);
        let (ready, started) = oneshot::channel::<Result<Self, LedgerError>>();
        let retries_max = db.conflict_retries_max;
        std::thread::Builder::new()
            .name("ledger-writers".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(LedgerError::Unavailable(format!(
                            "ledger writers' runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let pg = match super::postgres::PgLedger::connect(
                        &db,
                        super::postgres::Session::BatchWriters,
                    )
                    .await
                    {
                        Ok(pg) => pg,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let (group, queues, writer) =
                        Self::queues(Store::Postgres(pg.clone()), cfg, retries_max);
                    if ready.send(Ok(group)).is_err() {
                        return;
                    }
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..writers {
                        tasks.spawn(writer.clone().run(queues.reserves.clone()));
                        tasks.spawn(writer.clone().run(queues.finishes.clone()));
                    }
                    drop(queues);
                    while tasks.join_next().await.is_some() {}
                    pg.close().await;
                });
            })
            .map_err(|e| LedgerError::Unavailable(format!("ledger writers' thread: {e}")))?;
        started.await.unwrap_or_else(|_| {
            Err(LedgerError::Unavailable(
                "ledger writers' thread ended at start".to_owned(),
            ))
        })
    }

    /// The two bounded queues, the group (their sending ends) and a writer.
    fn queues(store: Store, cfg: GroupConfig, retries_max: u32) -> (Self, Queues, Writer) {
        let batch_max = cfg.batch_max.max(1);
        let queue_max = cfg.queue_max.max(1);
        let metrics = GroupMetrics::new();
        let (reserves, reserve_rx) = mpsc::channel(queue_max);
        let (finishes, finish_rx) = mpsc::channel(queue_max);
        let writer = Writer {
            store,
            batch_max,
            retries_max,
            metrics: metrics.clone(),
        };
        let queues = Queues {
            reserves: Arc::new(Mutex::new(reserve_rx)),
            finishes: Arc::new(Mutex::new(finish_rx)),
        };
        let group = Self {
            reserves,
            finishes,
            queue_wait: cfg.queue_wait,
            metrics,
        };
        (group, queues, writer)
    }

    pub(super) fn metrics(&self) -> &GroupMetrics {
        &self.metrics
    }

    pub(super) async fn reserve(
        &self,
        client: &ClientId,
        req: &TransactionRequest,
        first_attempt: Option<&SwitchName>,
        render: Render,
    ) -> Result<Reserved, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let op = ReserveOp {
            client: client.clone(),
            req: req.clone(),
            first_attempt: first_attempt.cloned(),
            render,
            reply,
        };
        enqueue(&self.reserves, op, self.queue_wait, "reserve").await?;
        answer.await.unwrap_or_else(|_| Err(writer_gone("reserve")))
    }

    pub(super) async fn finish(
        &self,
        gateway_ref: &GatewayRef,
        decision: Decision,
        attempt: Option<AttemptEnd>,
        fence: Option<super::LeaseToken>,
        render: Render,
    ) -> Result<TransactionRecord, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let op = FinishOp {
            gateway_ref: gateway_ref.clone(),
            decision,
            attempt,
            fence,
            render,
            reply,
        };
        enqueue(&self.finishes, op, self.queue_wait, "finish").await?;
        answer.await.unwrap_or_else(|_| Err(writer_gone("finish")))
    }
}

async fn enqueue<T>(
    queue: &mpsc::Sender<T>,
    op: T,
    wait: Duration,
    what: &'static str,
) -> Result<(), LedgerError> {
    match queue.send_timeout(op, wait).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(LedgerError::Unavailable(format!(
            "{what}: the ledger's queue stayed full for {} ms",
            wait.as_millis()
        ))),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(writer_gone(what)),
    }
}

fn writer_gone(what: &str) -> LedgerError {
    LedgerError::Unavailable(format!("{what}: the ledger's writer has stopped"))
}

/// A queue's receiving end, shared by its writers: one takes a batch while
/// the others are applying theirs.
type Queue<T> = Arc<Mutex<mpsc::Receiver<T>>>;

/// Both queues' receiving ends.
struct Queues {
    reserves: Queue<ReserveOp>,
    finishes: Queue<FinishOp>,
}

/// Waits for at least one operation, then takes what is queued, up to `max`.
async fn take<T>(queue: &Queue<T>, batch: &mut Vec<T>, max: usize) -> usize {
    queue.lock().await.recv_many(batch, max).await
}

#[derive(Clone)]
struct Writer {
    store: Store,
    batch_max: usize,
    retries_max: u32,
    metrics: GroupMetrics,
}

/// What one queue carries: how a batch of it is applied and how each
/// caller is answered.
trait Operation: Sized + Send + 'static {
    type Answer: Send + 'static;
    const KIND: Kind;

    /// One try of a batch: one database transaction, on the writer's own
    /// connection (Postgres).
    fn apply<'a>(
        store: &'a Store,
        held: &'a Held,
        ops: &'a [Self],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer, LedgerError>>, Fail>> + Send + 'a;

    /// A caller that went away needs no answer: the write stands.
    fn answer(self, answer: Result<Self::Answer, LedgerError>);
}

impl Operation for ReserveOp {
    type Answer = Reserved;
    const KIND: Kind = Kind::Reserve;

    fn apply<'a>(
        store: &'a Store,
        held: &'a Held,
        ops: &'a [Self],
    ) -> impl Future<Output = Result<Vec<Result<Reserved, LedgerError>>, Fail>> + Send + 'a {
        store.reserve_batch(held, ops)
    }

    fn answer(self, answer: Result<Reserved, LedgerError>) {
        let _ = self.reply.send(answer);
    }
}

impl Operation for FinishOp {
    type Answer = TransactionRecord;
    const KIND: Kind = Kind::Finish;

    fn apply<'a>(
        store: &'a Store,
        held: &'a Held,
        ops: &'a [Self],
    ) -> impl Future<Output = Result<Vec<Result<TransactionRecord, LedgerError>>, Fail>> + Send + 'a
    {
        store.finish_batch(held, ops)
    }

    fn answer(self, answer: Result<TransactionRecord, LedgerError>) {
        let _ = self.reply.send(answer);
    }
}

/// The connection a writer task keeps from one batch to the next (Postgres;
/// unused on SQLite). Taken from the writers' pool at the first batch and
/// after a failed one, and otherwise kept: a connection taken and given
/// back per batch costs two more round trips per batch (the pool pings it
/// when handing it out and when taking it back), a sixth of the server's
/// CPU per transaction. A batch that fails drops it (the pool closes it if
/// it is broken, e.g. after a database restart), so the next batch starts on
/// a tested one.
type Held = Mutex<Option<PoolConnection<sqlx::Postgres>>>;

/// The writer's held connection, taken from the pool when there is none.
async fn held_conn<'a>(
    l: &super::postgres::PgLedger,
    slot: &'a mut Option<PoolConnection<sqlx::Postgres>>,
) -> Result<&'a mut PgConnection, sqlx::Error> {
    if slot.is_none() {
        *slot = Some(l.pool().acquire().await?);
    }
    match slot {
        Some(conn) => Ok(&mut **conn),
        None => Err(sqlx::Error::PoolClosed),
    }
}

impl Writer {
    /// Takes batches off `queue` until every sender is gone, applies each
    /// (conflicts rerun it whole, as every ledger transaction) and answers
    /// its callers. A batch that fails gives every operation in it the same
    /// answer: unavailable, since nothing of it was stored.
    async fn run<O: Operation>(self, queue: Queue<O>) {
        let label = [O::KIND.as_str()];
        let mut batch = Vec::with_capacity(self.batch_max);
        let held = Held::default();
        while take(&queue, &mut batch, self.batch_max).await > 0 {
            self.metrics
                .batch_size
                .with_label_values(&label)
                .observe(batch.len() as f64);
            let started = Instant::now();
            let applied = super::sql::with_retries(
                O::KIND.as_str(),
                self.retries_max,
                self.store.conflict_test(),
                || O::apply(&self.store, &held, &batch),
            )
            .await;
            self.metrics
                .batch_duration
                .with_label_values(&label)
                .observe(started.elapsed().as_secs_f64());
            let answers = applied.unwrap_or_else(|e| {
                let e = match e {
                    LedgerError::Unavailable(_) => e,
                    e => {
                        tracing::error!(op = O::KIND.as_str(), error = %e, "ledger: batch failed as a whole");
                        LedgerError::Unavailable(format!("{}: batch failed: {e}", O::KIND.as_str()))
                    }
                };
                (0..batch.len()).map(|_| Err(e.clone())).collect()
            });
            for (op, answer) in batch.drain(..).zip(answers) {
                op.answer(answer);
            }
        }
    }
}

/// The transaction rows a finish batch locked, by reference.
type Rows = HashMap<String, TransactionRecord>;

/// The stored transactions a reserve batch found under its clients' ids.
#[derive(Default)]
struct Existing {
    /// By the client's id, then one row per client that used it.
    by_id: HashMap<String, Vec<TransactionRecord>>,
}

impl Existing {
    fn get(&self, client: &ClientId, id: &TransactionId) -> Option<&TransactionRecord> {
        self.by_id
            .get(id.as_str())?
            .iter()
            .find(|r| r.client == *client)
    }

    fn insert(&mut self, record: TransactionRecord) {
        self.by_id
            .entry(record.id.as_str().to_owned())
            .or_default()
            .push(record);
    }

    /// How many rows were found.
    fn len(&self) -> usize {
        self.by_id.values().map(Vec::len).sum()
    }
}

/// A client's key for one transaction: `(id, client)`, the order of the
/// unique index.
type ClientKey<'a> = (&'a str, &'a str);

fn client_key<'a>(client: &'a ClientId, id: &'a TransactionId) -> ClientKey<'a> {
    (id.as_str(), client.as_str())
}
/// Accounts by id, as locked for the batch.
type Accounts = HashMap<String, AccountRow>;

/// What a reserve batch writes and answers, computed before any write.
#[derive(Default)]
struct ReservePlan {
    answers: Vec<Result<Reserved, LedgerError>>,
    /// New rows: `reserved` (admitted) or `declined` with their response.
    inserts: Vec<TransactionRecord>,
    /// Admitted rows whose first attempt is recorded now: (reference, switch).
    first_attempts: Vec<(String, String)>,
    /// Money held per source account, ascending id.
    taken: BTreeMap<String, i64>,
}

/// The account ids a reserve batch reads and locks, ascending.
fn reserve_accounts(ops: &[ReserveOp]) -> Vec<String> {
    let ids: BTreeSet<&str> = ops
        .iter()
        .flat_map(|op| {
            let m = &op.req.movement;
            [m.source(), m.destination()]
        })
        .flatten()
        .map(AccountId::as_str)
        .collect();
    ids.into_iter().map(str::to_owned).collect()
}

/// The rules of one `reserve`, applied to each operation in arrival order as
/// if alone: an id the client already used answers with its row (also a
/// twin earlier in the same batch); account checks refuse with nothing
/// stored; a debit or transfer is admitted while its source's running
/// balance covers it.
fn plan_reserves(
    ops: &[ReserveOp],
    existing: &Existing,
    accounts: &Accounts,
    now: i64,
) -> ReservePlan {
    let mut plan = ReservePlan::default();
    let mut balances: HashMap<&str, i64> = accounts
        .iter()
        .map(|(id, row)| (id.as_str(), row.balance()))
        .collect();
    let mut new_rows: HashMap<ClientKey<'_>, usize> = HashMap::new();
    for op in ops {
        let key = client_key(&op.client, &op.req.id);
        if let Some(row) = existing.get(&op.client, &op.req.id) {
            plan.answers.push(Ok(Reserved::Existing(row.clone())));
            continue;
        }
        if let Some(&i) = new_rows.get(&key) {
            plan.answers
                .push(Ok(Reserved::Existing(plan.inserts[i].clone())));
            continue;
        }
        if let Err(e) = check_reserve(op, accounts) {
            plan.answers.push(Err(e));
            continue;
        }
        let amount = op.req.amount.minor_units();
        let admitted = match op.req.movement.source() {
            None => true,
            Some(source) => match balances.get_mut(source.as_str()) {
                Some(balance) if *balance >= amount => {
                    *balance -= amount;
                    *plan.taken.entry(source.as_str().to_owned()).or_default() += amount;
                    true
                }
                _ => false,
            },
        };
        let record = if admitted {
            let mut row = new_record(&op.client, &op.req, TxStatus::Reserved, now);
            if let Some(switch) = &op.first_attempt {
                row.attempts = 1;
                row.switch = Some(switch.clone());
                plan.first_attempts.push((
                    row.gateway_ref.as_str().to_owned(),
                    switch.as_str().to_owned(),
                ));
            }
            row
        } else {
            let mut row = new_record(&op.client, &op.req, TxStatus::Declined, now);
            row.reason = Some(ReleaseReason::InsufficientFunds);
            row.response = Some((op.render)(&row));
            row
        };
        new_rows.insert(key, plan.inserts.len());
        plan.answers.push(Ok(if admitted {
            Reserved::Fresh(record.clone())
        } else {
            Reserved::InsufficientFunds(record.clone())
        }));
        plan.inserts.push(record);
    }
    plan
}

/// The account checks of one reservation (absent and not owned answer alike).
fn check_reserve(op: &ReserveOp, accounts: &Accounts) -> Result<(), LedgerError> {
    let find = |id: &AccountId| accounts.get(id.as_str());
    let (client, currency) = (&op.client, &op.req.currency);
    match &op.req.movement {
        Movement::Debit { account } => check_spendable(find(account), client, currency),
        Movement::Credit { account } => check_owned(find(account), client, currency),
        Movement::Transfer { from, to } => {
            check_spendable(find(from), client, currency)?;
            check_destination(find(to), client, currency)
        }
    }
}

/// What a finish batch writes and answers, computed before any write.
#[derive(Default)]
struct FinishPlan {
    answers: Vec<Result<TransactionRecord, LedgerError>>,
    /// Rows made final, with their response set.
    finals: Vec<TransactionRecord>,
    /// Balance changes per account, ascending id.
    deltas: BTreeMap<String, i64>,
    /// `(reference, account, amount)`: two per commit, summing to zero.
    postings: Vec<(String, String, i64)>,
    /// `(reference, attempt, outcome, error)`.
    attempt_ends: Vec<(String, i64, &'static str, Option<String>)>,
}

/// Every account a finish batch may change, with the currency a settlement
/// account must have (`None`: a customer account), ascending id.
fn finish_accounts(ops: &[FinishOp], rows: &Rows) -> BTreeMap<String, Option<Currency>> {
    let mut ids = BTreeMap::new();
    for op in ops {
        // Only a row still in flight changes anything.
        let Some(row) = rows
            .get(op.gateway_ref.as_str())
            .filter(|r| !r.status.is_final())
        else {
            continue;
        };
        match &op.decision {
            Decision::Commit { switch, .. } => {
                if row.kind != TxKind::Transfer {
                    let settlement = AccountId::settlement(switch, &row.currency);
                    ids.insert(settlement.as_str().to_owned(), Some(row.currency.clone()));
                }
                if let Some(dest) = &row.destination {
                    ids.insert(dest.as_str().to_owned(), None);
                }
            }
            Decision::Release { .. } => {
                if let Some(source) = &row.source {
                    ids.insert(source.as_str().to_owned(), None);
                }
            }
        }
    }
    ids
}

/// The rules of one `commit` or `release`, applied to each operation in
/// arrival order as if alone (a second operation on the same transaction
/// sees the first's result).
fn plan_finishes(ops: &[FinishOp], mut rows: Rows, accounts: &Accounts, now: i64) -> FinishPlan {
    let mut plan = FinishPlan::default();
    for op in ops {
        if let Some(end) = &op.attempt {
            plan.attempt_ends.push((
                op.gateway_ref.as_str().to_owned(),
                i64::from(end.attempt_no),
                end.outcome.as_str(),
                end.error.clone(),
            ));
        }
        let answer = match rows.get_mut(op.gateway_ref.as_str()) {
            None => Err(LedgerError::TransactionNotFound),
            Some(row) => plan_finish(op, op.decision.target(), row, accounts, now, &mut plan),
        };
        plan.answers.push(answer);
    }
    plan
}

fn plan_finish(
    op: &FinishOp,
    target: TxStatus,
    row: &mut TransactionRecord,
    accounts: &Accounts,
    now: i64,
    plan: &mut FinishPlan,
) -> Result<TransactionRecord, LedgerError> {
    // A reconciler whose lease was claimed again since writes nothing: the
    // row is the new holder's (checked on the row this batch has locked).
    if let Some(fence) = &op.fence
        && row.lease_token.as_ref() != Some(fence)
    {
        return Err(LedgerError::LeaseLost);
    }
    match row.status {
        s if s == target => return Ok(row.clone()),
        TxStatus::Reserved | TxStatus::Pending => {}
        s => {
            return Err(LedgerError::InvalidState(format!(
                "{} of a {} transaction",
                match op.decision {
                    Decision::Commit { .. } => "commit".to_owned(),
                    Decision::Release { .. } => format!("release to {}", target.as_str()),
                },
                s.as_str()
            )));
        }
    }
    let (moves, mut done) = match &op.decision {
        Decision::Commit { switch, reference } => {
            let moves = commit_moves(row, switch, accounts)?;
            let mut done = row.clone();
            done.reason = None;
            done.switch = Some(switch.clone());
            done.switch_reference = Some(reference.clone());
            (moves, done)
        }
        Decision::Release { reason } => {
            let mut moves = Vec::new();
            if let Some(source) = &row.source {
                customer(accounts, source)?;
                moves.push((source.as_str().to_owned(), row.amount.minor_units()));
            }
            let mut done = row.clone();
            done.reason = Some(*reason);
            (moves, done)
        }
    };
    done.status = target;
    done.response = None;
    done.updated_at_ms = now;
    done.response = Some((op.render)(&done));
    for (account, delta) in moves {
        *plan.deltas.entry(account).or_default() += delta;
    }
    if let Decision::Commit { switch, .. } = &op.decision {
        let (from, to) = posting_ends(row, switch)?;
        let key = row.gateway_ref.as_str();
        let amount = row.amount.minor_units();
        plan.postings.push((key.to_owned(), from, -amount));
        plan.postings.push((key.to_owned(), to, amount));
    }
    *row = done.clone();
    plan.finals.push(done.clone());
    Ok(done)
}

/// The balance changes of a commit: the source's money was taken at reserve;
/// a debit's goes to settlement, a credit's comes from it.
fn commit_moves(
    row: &TransactionRecord,
    switch: &SwitchName,
    accounts: &Accounts,
) -> Result<Vec<(String, i64)>, LedgerError> {
    let settlement = AccountId::settlement(switch, &row.currency);
    let system = || -> Result<String, LedgerError> {
        match accounts.get(settlement.as_str()) {
            Some(a) if a.is_system_in(&row.currency) => Ok(settlement.as_str().to_owned()),
            _ => Err(LedgerError::InvalidState(format!(
                "account {settlement} is not a {} system account",
                row.currency
            ))),
        }
    };
    let amount = row.amount.minor_units();
    Ok(match row.kind {
        TxKind::Debit => vec![(system()?, amount)],
        TxKind::Credit => {
            let dest = row
                .destination
                .as_ref()
                .ok_or_else(|| missing(row, "destination"))?;
            customer(accounts, dest)?;
            vec![(system()?, -amount), (dest.as_str().to_owned(), amount)]
        }
        TxKind::Transfer => {
            let dest = row
                .destination
                .as_ref()
                .ok_or_else(|| missing(row, "destination"))?;
            customer(accounts, dest)?;
            vec![(dest.as_str().to_owned(), amount)]
        }
    })
}

/// `(from, to)` of a commit's two postings.
fn posting_ends(
    row: &TransactionRecord,
    switch: &SwitchName,
) -> Result<(String, String), LedgerError> {
    let settlement = AccountId::settlement(switch, &row.currency);
    let source = || row.source.as_ref().ok_or_else(|| missing(row, "source"));
    let dest = || {
        row.destination
            .as_ref()
            .ok_or_else(|| missing(row, "destination"))
    };
    let (from, to) = match row.kind {
        TxKind::Debit => (source()?.clone(), settlement),
        TxKind::Credit => (settlement, dest()?.clone()),
        TxKind::Transfer => (source()?.clone(), dest()?.clone()),
    };
    Ok((from.as_str().to_owned(), to.as_str().to_owned()))
}

fn customer(accounts: &Accounts, id: &AccountId) -> Result<(), LedgerError> {
    match accounts.get(id.as_str()) {
        Some(a) if a.is_customer() => Ok(()),
        _ => Err(LedgerError::InvalidState(format!(
            "customer account {id} is missing"
        ))),
    }
}

fn missing(row: &TransactionRecord, what: &str) -> LedgerError {
    LedgerError::InvalidState(format!("{} transaction without {what}", row.kind.as_str()))
}

/// The response stored with a final row (always set by the plan).
fn response_of(row: &TransactionRecord) -> Result<&StoredResponse, LedgerError> {
    row.response.as_ref().ok_or_else(|| {
        LedgerError::InvalidState(format!("final row {} has no response", row.gateway_ref))
    })
}

impl Store {
    /// Which database errors abort a transaction that is safe to rerun.
    fn conflict_test(&self) -> fn(&sqlx::Error) -> bool {
        match self {
            Store::Postgres(_) => super::postgres::PgLedger::is_conflict,
            Store::Sqlite(_) => super::sqlite::SqliteLedger::is_conflict,
        }
    }

    /// One try of a reserve batch: one database transaction.
    async fn reserve_batch(
        &self,
        held: &Held,
        ops: &[ReserveOp],
    ) -> Result<Vec<Result<Reserved, LedgerError>>, Fail> {
        let now = now_ms();
        let account_ids = reserve_accounts(ops);
        match self {
            Store::Postgres(l) => {
                let mut slot = held.lock().await;
                let applied = async {
                    let conn = held_conn(l, &mut slot).await?;
                    // First without reading existing rows: ids are new in
                    // the common case, and the write says when one was not
                    // (a replay or a twin); then once more, knowing the rows.
                    for read_existing in [false, true] {
                        let mut tx = conn.begin().await?;
                        let accounts = postgres::lock_accounts(&mut tx, &account_ids).await?;
                        let existing = if read_existing {
                            postgres::stored(&mut tx, ops).await?
                        } else {
                            Existing::default()
                        };
                        let plan = plan_reserves(ops, &existing, &accounts, now);
                        match postgres::write_reserves(&mut tx, ops, &existing, &plan, now).await? {
                            postgres::ReserveWrite::Done => {
                                tx.commit().await?;
                                return Ok(plan.answers);
                            }
                            postgres::ReserveWrite::Existed => tx.rollback().await?,
                        }
                    }
                    Err(Fail::Conflict(
                        "a client's transaction id was inserted concurrently",
                    ))
                }
                .await;
                if applied.is_err() {
                    *slot = None;
                }
                applied
            }
            Store::Sqlite(l) => {
                let mut tx = l.begin_write().await?;
                let accounts = sqlite::accounts(tx.conn(), &account_ids).await?;
                let existing = sqlite::stored(tx.conn(), ops).await?;
                let plan = plan_reserves(ops, &existing, &accounts, now);
                sqlite::take(tx.conn(), &plan.taken).await?;
                sqlite::insert_transactions(tx.conn(), &plan.inserts).await?;
                sqlite::queue_deliveries(tx.conn(), &plan.inserts).await?;
                sqlite::insert_first_attempts(tx.conn(), &plan.first_attempts, now).await?;
                tx.commit().await?;
                Ok(plan.answers)
            }
        }
    }

    /// One try of a finish batch: one database transaction.
    async fn finish_batch(
        &self,
        held: &Held,
        ops: &[FinishOp],
    ) -> Result<Vec<Result<TransactionRecord, LedgerError>>, Fail> {
        let now = now_ms();
        let refs: Vec<String> = {
            let set: BTreeSet<&str> = ops.iter().map(|op| op.gateway_ref.as_str()).collect();
            set.into_iter().map(str::to_owned).collect()
        };
        match self {
            Store::Postgres(l) => {
                let mut slot = held.lock().await;
                let applied = async {
                    let conn = held_conn(l, &mut slot).await?;
                    let mut tx = conn.begin().await?;
                    let rows = postgres::locked_transactions(&mut tx, &refs).await?;
                    let wanted = finish_accounts(ops, &rows);
                    let account_ids: Vec<String> = wanted.keys().cloned().collect();
                    let mut accounts = postgres::lock_accounts(&mut tx, &account_ids).await?;
                    if postgres::create_settlements(&mut tx, &wanted, &accounts, now).await? {
                        accounts = postgres::lock_accounts(&mut tx, &account_ids).await?;
                    }
                    let plan = plan_finishes(ops, rows, &accounts, now);
                    postgres::write_finishes(&mut tx, &plan, now).await?;
                    tx.commit().await?;
                    Ok(plan.answers)
                }
                .await;
                if applied.is_err() {
                    *slot = None;
                }
                applied
            }
            Store::Sqlite(l) => {
                let mut tx = l.begin_write().await?;
                let rows = sqlite::transactions(tx.conn(), &refs).await?;
                let wanted = finish_accounts(ops, &rows);
                sqlite::create_settlements(tx.conn(), &wanted, now).await?;
                let ids: Vec<String> = wanted.into_keys().collect();
                let accounts = sqlite::accounts(tx.conn(), &ids).await?;
                let plan = plan_finishes(ops, rows, &accounts, now);
                sqlite::add(tx.conn(), &plan.deltas).await?;
                sqlite::store_finals(tx.conn(), &plan.finals).await?;
                sqlite::queue_deliveries(tx.conn(), &plan.finals).await?;
                sqlite::insert_postings(tx.conn(), &plan.postings, now).await?;
                sqlite::end_attempts(tx.conn(), &plan.attempt_ends, now).await?;
                tx.commit().await?;
                Ok(plan.answers)
            }
        }
    }
}

/// A batch statement changed another number of rows than the plan says:
/// the whole batch fails (and rolls back).
fn check_rows(what: &str, expected: usize, changed: u64) -> Result<(), Fail> {
    if changed as usize == expected {
        Ok(())
    } else {
        Err(Fail::Ledger(LedgerError::InvalidState(format!(
            "batch {what}: {changed} rows changed, {expected} expected"
        ))))
    }
}
