//! Redis for the tests: the shared server `scripts/test.sh` finds, starts or
//! installs (its URL in `REDIS_URL`), with a key prefix per test whose keys
//! are deleted when the test ends; and throwaway `redis-server`s a test
//! starts on a free port of its own, to stop, freeze and restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{eventually, free_port};

const HOW_TO_START: &str = "run the tests through scripts/test.sh (it finds a Redis on \
     127.0.0.1:6379, or starts redis-server on a free port, or installs Debian's redis-server \
     package as root, and exports REDIS_URL), or start one yourself \
     (`redis-server --port 6379 --save '' --daemonize yes`; Debian/Ubuntu: \
     apt-get install redis-server) and export REDIS_URL=redis://127.0.0.1:6379";

/// `REDIS_URL`, checked with a `PING`; panics saying how to get a Redis.
pub fn url() -> String {
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("REDIS_URL is not set: {HOW_TO_START}"));
    if let Err(e) = ping(&url) {
        panic!("Redis at REDIS_URL={url} does not answer PING ({e}): {HOW_TO_START}");
    }
    url
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))
}

fn ping(url: &str) -> redis::RedisResult<()> {
    let mut conn = connect(url)?;
    redis::cmd("PING").query::<String>(&mut conn).map(drop)
}

/// A key prefix of one test on the Redis at `url`; every key under it is
/// deleted when this is dropped (the test passed or panicked).
pub struct Keys {
    pub url: String,
    pub prefix: String,
}

impl Keys {
    /// A prefix of its own (test name, process, random) on `REDIS_URL`.
    pub fn shared(test: &str) -> Self {
        Self::on(url(), test)
    }

    pub fn on(url: String, test: &str) -> Self {
        // At most 64 bytes (limits.redis.key_prefix).
        let random = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("sbt:{test}:{}:{}:", std::process::id(), &random[..12]);
        Self { url, prefix }
    }

    /// The `[limits.redis]` table that points a gateway at these keys.
    pub fn toml(&self, failure_mode: &str, timeout_ms: u64, backoff_ms: u64) -> String {
        self.toml_at(&self.url, failure_mode, timeout_ms, backoff_ms)
    }

    /// The same with another URL (a Redis that is not there, say).
    pub fn toml_at(
        &self,
        url: &str,
        failure_mode: &str,
        timeout_ms: u64,
        backoff_ms: u64,
    ) -> String {
        format!(
            "[limits.redis]\nurl = \"{url}\"\nkey_prefix = \"{}\"\nfailure_mode = \"{failure_mode}\"\ntimeout_ms = {timeout_ms}\nbackoff_ms = {backoff_ms}\n",
            self.prefix
        )
    }

    /// The keys under the prefix, with their remaining lifetime (ms).
    pub fn list(&self) -> Vec<(String, i64)> {
        let mut conn = connect(&self.url).expect("connect to Redis");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut conn).expect("PTTL");
                (k, ttl)
            })
            .collect()
    }

    /// Runs one command on this Redis (tests poke at it: `SCRIPT FLUSH`).
    pub fn command(&self, args: &[&str]) -> redis::Value {
        let mut conn = connect(&self.url).expect("connect to Redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).expect("Redis command")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // A throwaway server may be gone already: nothing to delete then.
        let Ok(mut conn) = connect(&self.url) else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, batch)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !batch.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&batch).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A `redis-server` of one test, on a free loopback port, no persistence.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

impl Server {
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.start_again().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; this test starts a Redis of its own: {HOW_TO_START}",
                    binary().display()
                )
            });
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(10), "redis-server answers", || {
            let url = url.clone();
            async move { ping(&url).is_ok() }
        })
        .await;
    }

    /// Kills it (SIGKILL: no goodbye on its connections) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP or SIGCONT: a server that accepts nothing and answers nothing.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOPped) server too.
        self.kill();
    }
}
