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
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return Some(url);
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

/// A test database on the shared server, dropped (`WITH (FORCE)`) when this
/// guard is, a failed or panicking test included, so a run leaves none
/// behind. `SWITCHBOARD_KEEP_TEST_DB=1` keeps them for a look (each kept one
/// is printed). Named `sb_<pid>_<uuid>`: scripts/test.sh drops stale ones of
/// earlier runs whose process is gone and that nobody is connected to.
pub struct TestDb {
    url: String,
    name: String,
}

impl TestDb {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("SWITCHBOARD_KEEP_TEST_DB").as_deref() == Ok("1") {
            eprintln!(
                "kept test database {} (SWITCHBOARD_KEEP_TEST_DB=1)",
                self.name
            );
            return;
        }
        let Some(admin_url) = admin_url() else { return };
        let name = self.name.clone();
        // Drop runs inside or outside a runtime, maybe while unwinding: a
        // thread of its own with its own runtime, waited for, so the database
        // is gone before the test is over. FORCE ends the sessions of a
        // gateway that is still shutting down.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return Err("no runtime".to_owned());
            };
            rt.block_on(async {
                let work = async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    let _ = admin.close().await;
                    done
                };
                tokio::time::timeout(Duration::from_secs(30), work)
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_owned()))
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: the dropper panicked",
                self.name
            ),
        }
    }
}

/// A new, empty Postgres database `sb_<pid>_<uuid>` on the test server,
/// dropped with its guard. Panics when there is no server to talk to.
pub async fn fresh_postgres() -> TestDb {
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
    let name = format!(
        "sb_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
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
    TestDb {
        url: with_database(&url, &name),
        name,
    }
}

/// Whether a database of this name exists on the test server.
pub async fn database_exists(name: &str) -> bool {
    let url = admin_url().expect("DATABASE_URL");
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("count");
    let _ = admin.close().await;
    n == 1
}

/// The database name of a URL made by [`fresh_postgres`].
pub fn database_name(url: &str) -> String {
    url.split('?')
        .next()
        .and_then(|base| base.rsplit('/').next())
        .unwrap_or_default()
        .to_owned()
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

pub async fn connected(url: &str) -> Ledger {
    let ledger = Ledger::connect(&database_config(url))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", redacted(url)));
    ledger.migrate().await.expect("migrations apply");
    ledger
}

/// A migrated ledger on a fresh Postgres database, with the database's
/// guard: keep it until the ledger is closed.
pub async fn ledger_pg() -> (Ledger, TestDb) {
    let db = fresh_postgres().await;
    (connected(db.url()).await, db)
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
