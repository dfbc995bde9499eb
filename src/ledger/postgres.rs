//! The Postgres backend: the production ledger, shared by every gateway
//! replica. What differs from SQLite is the `impl SqlBackend` below: a plain
//! `BEGIN` (`READ COMMITTED`), the conflict codes, and the reconciler's
//! `SKIP LOCKED` claim; the operations themselves are in `sql.rs`.
//!
//! Row locks (`FOR NO KEY UPDATE`, which does not block the
//! `KEY SHARE` locks foreign-key checks take) order concurrent writers;
//! `READ COMMITTED` is enough because every check that guards a write runs
//! under the lock of the row it guards. SQL stays within what CockroachDB and
//! YugabyteDB accept: no advisory locks, no PL/pgSQL.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult, Postgres,
};

use super::LedgerError;
use super::sql::{Arg, SqlBackend, WriteTx, bind_args, unavailable};
use crate::config::DatabaseConfig;

/// What a pool's connections run, which decides how their statements are
/// planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Session {
    /// The request path's one-at-a-time operations and reads: planned for
    /// the parameters at hand (see `prefer_custom_plans`).
    Requests,
    /// The batch writers' statements: each reaches its rows by key, so it is
    /// planned once (see `plan_batches_once`).
    BatchWriters,
}

#[derive(Clone)]
pub(super) struct PgLedger {
    pool: PgPool,
    retries_max: u32,
}

impl PgLedger {
    pub(super) async fn connect(
        cfg: &DatabaseConfig,
        session: Session,
    ) -> Result<Self, LedgerError> {
        // The parse error could quote the URL, password included: say only which.
        let options = PgConnectOptions::from_str(cfg.url.expose_secret()).map_err(|_| {
            LedgerError::Unavailable(format!(
                "database.url is not a valid Postgres URL: {}",
                cfg.url_redacted()
            ))
        })?;
        let statement_timeout_ms = cfg.statement_timeout_ms;
        let pool = PgPoolOptions::new()
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // A bare number is milliseconds.
                    sqlx::query("SELECT set_config('statement_timeout', $1, false)")
                        .bind(statement_timeout_ms.to_string())
                        .execute(&mut *conn)
                        .await?;
                    match session {
                        Session::Requests => prefer_custom_plans(conn).await,
                        Session::BatchWriters => plan_batches_once(conn).await,
                    }
                })
            })
            .max_connections(cfg.connections_max)
            .acquire_timeout(cfg.acquire_timeout())
            .connect_with(options)
            .await
            .map_err(|e| unavailable("connect", e))?;
        Ok(Self {
            pool,
            retries_max: cfg.conflict_retries_max,
        })
    }

    pub(super) async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| LedgerError::Unavailable(format!("migrate: {e}")))
    }
}

/// A plan for the parameters at hand, every time. sqlx prepares every
/// statement; after five runs Postgres may keep one generic plan, costed for
/// the table as it was then: a batch's `id = ANY($1)` planned while the table
/// was empty stays a sequential scan as it grows, and every batch slows with
/// it. Servers without the setting (Postgres before 12, some compatible
/// databases) refuse it: then the connection goes on as it is.
async fn prefer_custom_plans(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    set_if_known(
        conn,
        "SET plan_cache_mode = force_custom_plan",
        "database has no plan_cache_mode; generic plans stay possible",
    )
    .await
}

/// The batch writers' statements, planned once per connection, and never
/// with a sequential scan where an index reaches the rows.
///
/// Every statement of a batch (`group/postgres.rs`) finds its rows by key:
/// `id = ANY($1)` on a primary key, at most `ledger.batch_max` of them. A
/// plan made for the parameters at hand costed more than the statement
/// itself (~50 µs of server CPU per transaction), and it was still wrong:
/// costed on tables never analyzed (or analyzed while small), the planner
/// chose a sequential scan of `attempts` filtered by `= ANY` (every row
/// compared with every id of the batch: the finish batch's cost grew with
/// the table, ~8 ms per batch at 10,000 rows). With `enable_seqscan` off a
/// sequential scan is costed as a last resort, so the index lookups win
/// whatever the statistics say, and one generic plan, made at the first
/// execution on any table size, is the right plan for every size. (The one
/// partial index, of in-flight rows, is kept out of these plans by how the
/// finish batch writes its status guard.) Servers without a setting
/// refuse it: then the connection goes on as it is.
async fn plan_batches_once(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    set_if_known(
        conn,
        "SET enable_seqscan = off",
        "database has no enable_seqscan; batch plans follow its statistics",
    )
    .await?;
    set_if_known(
        conn,
        "SET plan_cache_mode = force_generic_plan",
        "database has no plan_cache_mode; batch statements are planned as it decides",
    )
    .await
}

/// Runs a `SET`; a server that does not know the setting (42704) logs `why`.
async fn set_if_known(
    conn: &mut PgConnection,
    set: &'static str,
    why: &str,
) -> Result<(), sqlx::Error> {
    match sqlx::query(set).execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42704") => {
            tracing::info!("{why}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl SqlBackend for PgLedger {
    type Db = Postgres;

    /// Concurrent claimers (other gateway replicas) skip the rows one holds
    /// instead of waiting for them, so no two get the same row.
    const CLAIM_LOCK: &'static str = "FOR UPDATE SKIP LOCKED";

    const DB_NOW_MS: &'static str =
        "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn retries_max(&self) -> u32 {
        self.retries_max
    }

    /// `READ COMMITTED`, the server default.
    async fn begin_write(&self) -> Result<WriteTx<Postgres>, sqlx::Error> {
        Ok(WriteTx::new(self.pool.begin().await?, None))
    }

    /// Serialization failure (40001: also CockroachDB's "restart transaction")
    /// and deadlock (40P01) abort the whole transaction, which is safe to rerun.
    fn is_conflict(e: &sqlx::Error) -> bool {
        matches!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("40001" | "40P01")
        )
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn explain(&self, sql: &str, args: &[Arg<'_>]) -> Result<String, sqlx::Error> {
        let text = format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}");
        let query = sqlx::query_scalar::<Postgres, String>(sqlx::AssertSqlSafe(text.as_str()));
        let lines = bind_args!(query, args).fetch_all(&self.pool).await?;
        Ok(lines.join("\n"))
    }
}
