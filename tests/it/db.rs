//! Test databases: a fresh Postgres database per test, or a fresh SQLite file.

#![allow(dead_code)] // each helper is used by some tests, not all

use std::time::Duration;

use sqlx::Connection;
use switchboard::config::{Config, DatabaseConfig};
use switchboard::ledger::Ledger;

/// Waits for a pooled connection this long in tests: the concurrency tests
/// queue thousands of requests on a small pool, on a busy 2-core machine.
const TEST_ACQUIRE_TIMEOUT_MS: u64 = 60_000;

/// The admin URL: `DATABASE_URL` from the environment, else from `.env.test`.
fn admin_url() -> Option<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.test");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("DATABASE_URL=")?;
        Some(value.trim().trim_matches('"').to_owned()).filter(|v| !v.is_empty())
    })
}

/// `scheme://user:password@host` → `scheme://user:***@host`, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The same server URL with another database name (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A new, empty Postgres database `sb_<uuid>` on the test server; its URL.
/// Panics when there is no server to talk to.
pub async fn fresh_postgres_url() -> String {
    let Some(url) = admin_url() else {
        panic!(
            "no Postgres at (DATABASE_URL unset): run scripts/test.sh, \
             or start one and set DATABASE_URL"
        );
    };
    let no_server = |e: &dyn std::fmt::Display| -> ! {
        panic!(
            "no Postgres at {}: run scripts/test.sh, or start one and set DATABASE_URL ({e})",
            redacted(&url)
        )
    };
    let mut admin = match tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(&url),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => no_server(&e),
        Err(_) => no_server(&"connect timed out"),
    };
    let name = format!("sb_{}", uuid::Uuid::new_v4().simple());
    // CREATE DATABASE copies template1 and fails while another session is in
    // it, which parallel tests can cause for a moment: try a few times.
    let mut tries = 0;
    loop {
        let sql = format!("CREATE DATABASE {name}");
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("CREATE DATABASE {name} failed ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
            Err(e) => panic!("CREATE DATABASE {name} on {}: {e}", redacted(&url)),
        }
    }
    let _ = admin.close().await;
    with_database(&url, &name)
}

/// A `[database]` section for `url`, on top of the defaults. No conflict
/// retries: the ledger's lock order should make deadlocks and busy errors
/// impossible, and a retry would hide one from the tests.
pub fn database_config(url: &str) -> DatabaseConfig {
    Config::from_toml(&format!(
        "[database]\nurl = \"{url}\"\nacquire_timeout_ms = {TEST_ACQUIRE_TIMEOUT_MS}\n\
         conflict_retries_max = 0\n\
         [reconciler]\nstale_after_ms = 3600000\n"
    ))
    .expect("test database config must validate")
    .database
}

async fn connected(url: &str) -> Ledger {
    let ledger = Ledger::connect(&database_config(url))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", redacted(url)));
    ledger.migrate().await.expect("migrations apply");
    ledger
}

/// A migrated ledger on a fresh Postgres database.
pub async fn ledger_pg() -> Ledger {
    connected(&fresh_postgres_url().await).await
}

/// Like [`ledger_pg`], with the database's URL, for [`drop_postgres_database`].
pub async fn ledger_pg_with_url() -> (Ledger, String) {
    let url = fresh_postgres_url().await;
    (connected(&url).await, url)
}

/// Drops a database made by [`fresh_postgres_url`] once its test passed (a
/// failed test keeps its database for a look). Best effort.
pub async fn drop_postgres_database(url: &str) {
    let Some(admin_url) = admin_url() else { return };
    let Some(name) = url
        .split('?')
        .next()
        .and_then(|base| base.rsplit('/').next())
        .filter(|n| n.starts_with("sb_"))
    else {
        return;
    };
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}

/// A migrated ledger on a fresh in-memory SQLite database (one connection).
pub async fn ledger_sqlite() -> Ledger {
    connected("sqlite::memory:").await
}

/// A migrated ledger on a fresh SQLite file (WAL, a pool of connections), for
/// tests that need real concurrency. Keep the directory until the ledger is
/// closed: dropping it deletes the database.
pub async fn ledger_sqlite_file() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    (connected(&url).await, dir)
}
