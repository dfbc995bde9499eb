//! The one harness: `spawn_gateway` starts the real application on port 0
//! with real TLS, and hands back its addresses and an HTTPS client that
//! trusts the development CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use switchboard::app::Application;
use switchboard::config::{Config, Sources};
use switchboard::devtools::certs::CertPaths;
use switchboard::devtools::sim::{self, SimHandle, SimOptions};
use switchboard::edge::AppState;
use switchboard::edge::Authenticator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "harness-secret-0123456789abcdef0123456789abcdef";

/// Development certificates, made once per test process.
pub fn certs() -> &'static CertPaths {
    static CERTS: OnceLock<CertPaths> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchboard-it-certs-{}", std::process::id()));
        switchboard::devtools::certs::generate(&dir).expect("generate test certificates")
    })
}

/// Which ledger a test gateway uses.
#[derive(Debug, Clone)]
pub enum Db {
    /// A fresh Postgres database (needs `DATABASE_URL`, see scripts/test.sh).
    Postgres,
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// This database, owned by the test (several replicas on one ledger).
    Shared(String),
}

pub struct Options {
    pub db: Db,
    pub switches: Vec<(String, String)>,
    /// TOML layers over the test config, in order (later wins), merged by
    /// the config crate as the product merges its own layers.
    pub layers: Vec<String>,
    /// Also read this file as `--config FILE`, watched for live reloads.
    pub config_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db: Db::Postgres,
            switches: Vec::new(),
            layers: Vec::new(),
            config_file: None,
        }
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub auth: Authenticator,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
    /// Dropped last: the gateway's database, gone with the gateway.
    db: Option<crate::db::TestDb>,
}

pub async fn spawn_gateway() -> TestGateway {
    spawn_gateway_with(Options::default()).await
}

pub async fn spawn_gateway_with(opts: Options) -> TestGateway {
    let (url, dir, db) = match opts.db {
        Db::Postgres => {
            let db = crate::db::fresh_postgres().await;
            (db.url().to_owned(), None, Some(db))
        }
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
            (url, Some(dir), None)
        }
        Db::Shared(url) => (url, None, None),
    };
    let mut toml = base_toml(&url);
    toml.push_str(&switches_toml(&opts.switches));
    let mut layers = vec![toml.as_str()];
    layers.extend(opts.layers.iter().map(String::as_str));
    let config = Config::from_toml_layers(&layers).unwrap_or_else(|e| panic!("test config: {e}"));
    let sources = opts.config_file.as_ref().map(|file| {
        // The file is layered over the base as `--config` is over the defaults;
        // it alone carries the switches and limits.
        assert!(
            opts.switches.is_empty() && opts.layers.is_empty(),
            "put them in the file"
        );
        let dir = file.parent().expect("config file dir").to_owned();
        std::fs::write(dir.join("default.toml"), &toml).expect("write base config");
        Sources {
            config_dir: dir,
            env_name: None,
            file: Some(file.clone()),
            env_vars: Vec::new(),
        }
    });
    let config = match &sources {
        Some(sources) => Config::load(sources).unwrap_or_else(|e| panic!("test config: {e}")),
        None => config,
    };
    let auth = Authenticator::new(&config.auth).expect("test auth keys");
    let app = Application::build_with_sources(config, sources)
        .await
        .expect("build the application");
    let (addr, ops, state) = (app.https_addr(), app.ops_addr(), app.state());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    // Started means the first probe round is done and the listeners accept.
    let started = state.clone();
    eventually(Duration::from_secs(10), "the gateway started", || {
        let started = started.clone();
        async move { started.ready.load(std::sync::atomic::Ordering::Acquire) }
    })
    .await;
    TestGateway {
        addr,
        ops,
        base: format!("https://localhost:{}", addr.port()),
        client: https_client(),
        state,
        auth,
        shutdown,
        task: Some(task),
        _dir: dir,
        db,
    }
}

/// The test gateway's own settings: port 0, test certificates, `url`.
pub fn base_toml(url: &str) -> String {
    let certs = certs();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
ops_listen = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
shutdown_grace_ms = 5000
# Tests stop at once; the drain's own tests set one.
shutdown_drain_ms = 0
[database]
url = "{url}"
connections_max = 8
[auth]
dev_hs256_secret = "{SECRET}"
# Load tests come from one address and few clients: limits are the business
# of the tests that set them.
[limits]
per_ip_per_s = 1000000
per_ip_burst = 1000000
transactions_in_flight_max = 100000
[limits.roles.transact]
per_s = 1000000
burst = 1000000
[limits.roles.auditor]
per_s = 1000000
burst = 1000000
[limits.roles.operator]
per_s = 1000000
burst = 1000000
"#,
        cert = certs.server_cert().display(),
        key = certs.server_key().display(),
    )
}

/// `[[switches]]` tables for `switches` (name, url): appended to a config
/// document, they are its switch list.
pub fn switches_toml(switches: &[(String, String)]) -> String {
    switches
        .iter()
        .map(|(name, url)| format!("[[switches]]\nname = \"{name}\"\nurl = \"{url}\"\n"))
        .collect()
}

/// The test config (`base_toml` for `url`) with `layers` over it, through
/// the product's own layering (`Config::from_toml_layers`).
pub fn test_config(url: &str, layers: &[&str]) -> Config {
    let base = base_toml(url);
    let mut all = vec![base.as_str()];
    all.extend_from_slice(layers);
    Config::from_toml_layers(&all).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// An HTTPS client that trusts only the development CA.
pub fn https_client() -> reqwest::Client {
    let pem = std::fs::read(certs().ca_cert()).expect("read CA");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA pem")])
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestGateway {
    /// The name of its Postgres database (`None` on SQLite).
    pub fn database_name(&self) -> Option<String> {
        self.db
            .as_ref()
            .map(|db| crate::db::database_name(db.url()))
    }

    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.auth.sign(sub, roles, 3600).expect("sign token")
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send_json(reqwest::Method::POST, path, token, body)
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send_json(reqwest::Method::PATCH, path, token, body)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Reply {
        let resp = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        read(resp).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        let resp = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        read(resp).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        read(resp).await
    }

    /// Creates an account through the API as an operator; panics unless 201.
    pub async fn account(&self, id: &str, owner: &str, currency: &str, balance: i64) {
        let op = self.token("test-operator", &["operator"]);
        let r = self
            .post(
                "/v1/accounts",
                &op,
                &account_body(id, owner, currency, balance),
            )
            .await;
        assert_eq!(r.status, 201, "create account {id}: {:?}", r.json);
    }

    pub async fn balance(&self, id: &str) -> i64 {
        let auditor = self.token("test-auditor", &["auditor"]);
        let r = self.get(&format!("/v1/accounts/{id}"), &auditor).await;
        assert_eq!(r.status, 200, "read account {id}: {:?}", r.json);
        r.json["balance"].as_i64().expect("balance")
    }

    /// One sample of the gateway's metrics (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric(&self.ops_get("/metrics").await.1, sample)
    }

    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.ops))
            .await
            .unwrap_or_else(|e| panic!("GET ops {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("ops body"))
    }

    /// Begins graceful shutdown and returns a handle that resolves when the
    /// application has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        self.shutdown.cancel();
        self.task.take().expect("running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("response body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "status {status}: body is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Reply {
        status,
        headers,
        json,
    }
}

/// Simulated switches as in-process tasks on port 0.
pub async fn spawn_sims(n: usize) -> Vec<SimHandle> {
    let mut sims = Vec::new();
    for i in 0..n {
        let name = format!("sim-{}", i + 1);
        sims.push(
            sim::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), SimOptions::new(name))
                .await
                .expect("spawn sim"),
        );
    }
    sims
}

pub fn switch_list(sims: &[SimHandle]) -> Vec<(String, String)> {
    sims.iter().map(|s| (s.name.clone(), s.url())).collect()
}

/// The `switchboard` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard"))
}

/// Polls `check` every 50 ms until it is true, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {limit:?}: {what}");
}

/// A free loopback port (bound, then released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The gateway as a real child process (`switchboard serve`), for crash tests.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub config_file: PathBuf,
    /// Extra environment variables of the process, kept for a restart.
    env: Vec<(String, String)>,
}

impl GatewayProcess {
    /// [`GatewayProcess::start`] with extra environment variables.
    pub async fn start_with_env(
        dir: &std::path::Path,
        db_url: &str,
        toml: &str,
        switches: &[(String, String)],
        env: &[(&str, &str)],
    ) -> Self {
        let config_file = dir.join("gateway.toml");
        let text = format!("{toml}{}", switches_toml(switches));
        std::fs::write(&config_file, text).expect("write gateway config");
        let (port, ops_port) = (free_port(), free_port());
        std::fs::create_dir_all(dir.join("config")).expect("config dir");
        std::fs::write(dir.join("config/default.toml"), base_toml(db_url))
            .expect("write base config");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::spawn(
            dir,
            config_file,
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], ops_port)),
            env,
        )
        .await
    }

    /// Writes `toml` and the `switches` list to `dir/gateway.toml` and starts
    /// `switchboard serve` on it, over the test base for `db_url`, on fixed
    /// free ports.
    pub async fn start(
        dir: &std::path::Path,
        db_url: &str,
        toml: &str,
        switches: &[(String, String)],
    ) -> Self {
        let config_file = dir.join("gateway.toml");
        let text = format!("{toml}{}", switches_toml(switches));
        std::fs::write(&config_file, text).expect("write gateway config");
        Self::start_on_file(dir, db_url, config_file).await
    }

    /// Starts `switchboard serve` with `--config config_file` (written by
    /// the caller: a test that needs it somewhere else, or a symlink), over
    /// the test base for `db_url`, on fixed free ports.
    pub async fn start_on_file(dir: &std::path::Path, db_url: &str, config_file: PathBuf) -> Self {
        let (port, ops_port) = (free_port(), free_port());
        // Layered as in production: the base is the working directory's
        // config/default.toml, the test's settings are the `--config` file,
        // the ports are environment variables (`spawn`).
        std::fs::create_dir_all(dir.join("config")).expect("config dir");
        std::fs::write(dir.join("config/default.toml"), base_toml(db_url))
            .expect("write base config");
        Self::spawn(
            dir,
            config_file,
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], ops_port)),
            Vec::new(),
        )
        .await
    }

    /// Starts another process on the same config file (a restart).
    pub async fn restart(dir: &std::path::Path, previous: &GatewayProcess) -> Self {
        Self::spawn(
            dir,
            previous.config_file.clone(),
            previous.addr,
            previous.ops,
            previous.env.clone(),
        )
        .await
    }

    async fn spawn(
        dir: &std::path::Path,
        config_file: PathBuf,
        addr: SocketAddr,
        ops: SocketAddr,
        env: Vec<(String, String)>,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))
            .expect("gateway log");
        let child = std::process::Command::new(binary())
            .args([
                "--config",
                config_file.to_str().expect("utf-8 path"),
                "serve",
            ])
            .current_dir(dir)
            .env_remove("SWITCHBOARD_ENV")
            .env_remove("SWITCHBOARD__AUTH__DEV_HS256_SECRET")
            .env_remove("SWITCHBOARD__DATABASE__URL")
            // The last layer, over the base's port 0: fixed ports, the same
            // on a restart.
            .env("SWITCHBOARD__SERVER__LISTEN", addr.to_string())
            .env("SWITCHBOARD__SERVER__OPS_LISTEN", ops.to_string())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start switchboard serve");
        let mut process = Self {
            child,
            addr,
            ops,
            config_file,
            env,
        };
        let url = format!("http://{ops}/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return process;
            }
            let exited = process.child.try_wait().ok().flatten();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
                panic!("the gateway process is not ready (exit: {exited:?}); its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Creates an account through the API as an operator; panics unless 201.
    pub async fn account(&self, id: &str, owner: &str, currency: &str, balance: i64) {
        let op = test_auth().sign("op", &["operator"], 600).unwrap();
        let r = https_client()
            .post(format!("{}/v1/accounts", self.base()))
            .bearer_auth(&op)
            .json(&account_body(id, owner, currency, balance))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create account {id}: {e}"));
        assert_eq!(r.status(), 201, "create account {id}");
    }

    /// Sends the process signal `name` (`TERM`, `HUP`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits at most `limit` for the process to exit; its status, if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no draining.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one metric sample line (`name{labels} value`), 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A ledger connection of the test's own to a gateway's database.
pub async fn ledger_at(url: &str) -> switchboard::ledger::Ledger {
    switchboard::ledger::Ledger::connect(&crate::db::database_config(url))
        .await
        .expect("connect to the ledger")
}

/// Signs tokens the way every test gateway verifies them (`SECRET`).
pub fn test_auth() -> Authenticator {
    let config = test_config("sqlite::memory:", &[]);
    Authenticator::new(&config.auth).expect("test auth keys")
}

/// Domain values for tests, parsed from literals known to be valid.
pub fn aid(s: &str) -> switchboard::domain::AccountId {
    switchboard::domain::AccountId::parse(s).unwrap()
}

pub fn cid(s: &str) -> switchboard::domain::ClientId {
    switchboard::domain::ClientId::parse(s).unwrap()
}

pub fn sw(s: &str) -> switchboard::domain::SwitchName {
    switchboard::domain::SwitchName::parse(s).unwrap()
}

pub fn eur() -> switchboard::domain::Currency {
    switchboard::domain::Currency::parse("EUR").unwrap()
}

// Request bodies of the API, built here once. Tests that send malformed
// bodies on purpose (hostile.rs, props.rs, the invalid-field table in
// transactions.rs) write theirs out: the malformation is the point.

/// A debit of `amount` EUR minor units from `account`.
pub fn debit(id: &str, account: &str, amount: i64) -> Value {
    serde_json::json!({"transactionId": id, "type": "debit", "accountId": account, "amount": amount, "currency": "EUR"})
}

/// A credit of `amount` EUR minor units to `account`.
pub fn credit(id: &str, account: &str, amount: i64) -> Value {
    serde_json::json!({"transactionId": id, "type": "credit", "accountId": account, "amount": amount, "currency": "EUR"})
}

/// A transfer of `amount` EUR minor units from `from` to `to`.
pub fn transfer(id: &str, from: &str, to: &str, amount: i64) -> Value {
    serde_json::json!({"transactionId": id, "type": "transfer", "from": from, "to": to, "amount": amount, "currency": "EUR"})
}

/// `body` (a transaction request) in another currency.
pub fn in_currency(mut body: Value, currency: &str) -> Value {
    body["currency"] = currency.into();
    body
}

/// `body` (a transaction request) carrying `metadata`.
pub fn with_metadata(mut body: Value, metadata: Value) -> Value {
    body["metadata"] = metadata;
    body
}

/// An account-creation request.
pub fn account_body(id: &str, owner: &str, currency: &str, opening_balance: i64) -> Value {
    serde_json::json!({"accountId": id, "owner": owner, "currency": currency, "openingBalance": opening_balance})
}

/// A plain HTTP/1.1 server on a free loopback port, answering every request
/// with `answer` (in place of a switch, a proxy or a webhook receiver); it
/// stops when the returned task is aborted or the test's runtime ends.
pub async fn serve_http<F, Fut>(answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test HTTP server");
    let addr = listener.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    (addr, task)
}
