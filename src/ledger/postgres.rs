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
use super::sql::{SqlBackend, WriteTx, unavailable};
use crate::config::DatabaseConfig;

#[derive(Clone)]
pub(super) struct PgLedger {
    pool: PgPool,
    retries_max: u32,
}

impl PgLedger {
    pub(super) async fn connect(cfg: &DatabaseConfig) -> Result<Self, LedgerError> {
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
                    prefer_custom_plans(conn).await
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
    match sqlx::query("SET plan_cache_mode = force_custom_plan")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42704") => {
            tracing::info!("database has no plan_cache_mode; generic plans stay possible");
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
}
