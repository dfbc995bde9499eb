//! The SQLite backend: the embedded ledger for `demo` and single-node use.
//! What differs from Postgres is the `impl SqlBackend` below: `BEGIN
//! IMMEDIATE` after a writer turn, SQLite's busy codes as conflicts, and no
//! row-lock clauses; the operations themselves are in `sql.rs`.
//!
//! SQLite has one writer at a time. Writes begin with `BEGIN IMMEDIATE`, so a
//! transaction holds the write lock from its first statement (no read-to-write
//! lock upgrade, hence no upgrade deadlocks, and no row locks needed); and
//! writers of this process queue on a FIFO mutex before that, so they wait in
//! order instead of polling SQLite's busy handler. The busy timeout still
//! covers other processes on the same file. Reads run beside the writer (WAL).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use tokio::sync::Mutex;

use super::LedgerError;
use super::sql::{Arg, SqlBackend, WriteTx, bind_args, unavailable};
use crate::config::DatabaseConfig;

#[derive(Clone)]
pub(super) struct SqliteLedger {
    pool: SqlitePool,
    retries_max: u32,
    /// This process's writers, in arrival order.
    writer: Arc<Mutex<()>>,
    /// Longest wait for the writer's turn, like a pool acquire.
    writer_wait: Duration,
}

/// `sqlite::memory:` and friends: a database that lives as long as a connection.
fn is_memory_url(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl SqliteLedger {
    pub(super) async fn connect(cfg: &DatabaseConfig) -> Result<Self, LedgerError> {
        let url = cfg.url.expose_secret();
        let in_memory = is_memory_url(url);
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| LedgerError::Unavailable(format!("database.url: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(cfg.acquire_timeout());
        let pool_options = if in_memory {
            // The database vanishes with its last connection: keep exactly
            // one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            // WAL: readers do not block the writer. FULL: a commit survives a
            // power cut, which a ledger owes its clients.
            options = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            SqlitePoolOptions::new().max_connections(cfg.connections_max)
        };
        let pool = pool_options
            .acquire_timeout(cfg.acquire_timeout())
            .connect_with(options)
            .await
            .map_err(|e| unavailable("connect", e))?;
        Ok(Self {
            pool,
            retries_max: cfg.conflict_retries_max,
            writer: Arc::new(Mutex::new(())),
            writer_wait: cfg.acquire_timeout(),
        })
    }

    pub(super) async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| LedgerError::Unavailable(format!("migrate: {e}")))
    }
}

impl SqlBackend for SqliteLedger {
    type Db = Sqlite;

    /// None: `BEGIN IMMEDIATE` already holds the whole file for writing.
    const CLAIM_LOCK: &'static str = "";

    /// The embedded file's clock is this host's, unskewed.
    const DB_NOW_MS: &'static str =
        "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn retries_max(&self) -> u32 {
        self.retries_max
    }

    /// This process's writer turn first (FIFO), then `BEGIN IMMEDIATE`.
    async fn begin_write(&self) -> Result<WriteTx<Sqlite>, sqlx::Error> {
        let turn = tokio::time::timeout(self.writer_wait, self.writer.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx::new(tx, Some(turn)))
    }

    /// SQLITE_BUSY (5) and SQLITE_LOCKED (6), with any extended code: another
    /// connection holds the lock past the busy timeout; rerunning is safe.
    fn is_conflict(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn explain(&self, sql: &str, args: &[Arg<'_>]) -> Result<String, sqlx::Error> {
        let text = format!("EXPLAIN QUERY PLAN {sql}");
        let query =
            sqlx::query_as::<Sqlite, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(text.as_str()));
        let rows = bind_args!(query, args).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
