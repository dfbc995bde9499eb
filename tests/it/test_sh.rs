//! scripts/test.sh itself: on a Postgres cluster of this test's own (so no
//! other run's databases are touched), before the tests run it drops the
//! stale test databases of earlier runs, and only those; and it finds or
//! starts a Redis and exports `REDIS_URL`.

use std::process::Command;

use sqlx::Connection;

use crate::pg_restart::Cluster;

async fn databases(url: &str) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let names = sqlx::query_scalar("SELECT datname FROM pg_database ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .expect("list databases");
    let _ = conn.close().await;
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_sh_drops_stale_test_databases_nobody_uses() {
    let cluster = Cluster::start_new().await;
    let url = cluster.url();
    let hex = |c: char| std::iter::repeat_n(c, 32).collect::<String>();
    // A pid above any pid_max: that process is gone.
    let gone = format!("sb_999999999_{}", hex('a'));
    let old_style = format!("sb_{}", hex('b'));
    let running = format!("sb_{}_{}", std::process::id(), hex('c'));
    let in_use = format!("sb_{}", hex('d'));
    let bench = format!("sb_bench_4242_{}", hex('e'));
    let other = "payments".to_owned();
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    for name in [&gone, &old_style, &running, &in_use, &bench, &other] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
    }
    let _ = admin.close().await;
    let in_use_url = format!("{}/{in_use}", url.strip_suffix("/postgres").expect("url"));
    let holder = sqlx::PgConnection::connect(&in_use_url)
        .await
        .expect("connect to the database in use");

    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test.sh"))
        .env("DATABASE_URL", &url)
        .env("SWITCHBOARD_TEST_CMD", "true")
        .env("SWITCHBOARD_NO_INSTALL", "1")
        .output()
        .expect("run scripts/test.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "test.sh failed: {stderr}");
    let left = databases(&url).await;
    for name in [&gone, &old_style] {
        assert!(!left.contains(name), "{name} is stale: {left:?}\n{stderr}");
    }
    for name in [&running, &in_use, &bench, &other] {
        assert!(left.contains(name), "{name} must stay: {left:?}\n{stderr}");
    }
    assert!(
        stderr.contains("dropped 2 stale test database(s)")
            && stderr.contains("kept 1 of test processes still running"),
        "{stderr}"
    );
    let _ = holder.close().await;
}

/// With no Redis at `REDIS_URL` nor at the default address, scripts/test.sh
/// starts a throwaway `redis-server` on a free port, hands the tests its
/// URL, and stops it (and removes its directory) when it exits; a Redis
/// that answers at `REDIS_URL` is used as it is.
#[test]
fn test_sh_finds_or_starts_a_redis_and_exports_redis_url() {
    let dead = || format!("redis://127.0.0.1:{}", crate::harness::free_port());
    let run = |redis_url: &str| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test.sh"))
            .env("REDIS_URL", redis_url)
            .env("SWITCHBOARD_REDIS_DEFAULT_URL", dead())
            .env(
                "SWITCHBOARD_TEST_CMD",
                r#"printf 'url=%s ping=%s\n' "$REDIS_URL" "$(redis-cli -u "$REDIS_URL" ping)""#,
            )
            .env("SWITCHBOARD_NO_INSTALL", "1")
            .output()
            .expect("run scripts/test.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "test.sh failed: {stderr}");
        (stdout, stderr)
    };

    let (stdout, stderr) = run(&dead());
    assert!(
        stderr.contains("does not answer PING") && stderr.contains("started throwaway Redis"),
        "{stderr}"
    );
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("url="))
        .and_then(|l| l.strip_suffix(" ping=PONG"))
        .unwrap_or_else(|| panic!("the tests saw a Redis that answers: {stdout}\n{stderr}"));
    let dir = stderr
        .split("(data in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the throwaway's directory");
    let answers = |url: &str| {
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(1)))
            .is_ok()
    };
    assert!(!answers(url), "the throwaway Redis at {url} is stopped");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is removed");

    // One that answers is used as it is.
    let url = crate::redis_harness::url();
    let (stdout, stderr) = run(&url);
    assert!(
        stderr.contains(&format!("using Redis at {url} (from the environment)")),
        "{stderr}"
    );
    assert!(stdout.contains(&format!("url={url} ping=PONG")), "{stdout}");
}
