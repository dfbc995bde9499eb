//! `switchboard-load`: drives `POST /v1/transactions` over HTTPS and checks
//! every answer.
//!
//! It signs its own tokens with the development secret, can create the
//! accounts it needs through the API, then runs a bounded number of requests
//! at a fixed concurrency over keep-alive connections and prints throughput,
//! latency percentiles and outcome counts. Exits 1 if any answer was not one
//! the API may give.
//!
//! ```text
//! # 10,000 withdrawals of 2 from one account holding 10,000:
//! switchboard-load --accounts 1 --balance 10000 --requests 10000 --amount 2 --concurrency 256
//! # sustained rate on 64 spread accounts:
//! switchboard-load --accounts 64 --balance 1000000000 --requests 50000 --concurrency 64
//! ```
//!
//! `main.rs` sets up (tokens, accounts) and runs a load or the idle-connection
//! hold; `http.rs` is the client; `drive.rs` the workers and the check of
//! each answer; `report.rs` what is printed.

mod drive;
mod http;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::StatusCode;
use clap::Parser;
use secrecy::SecretString;

use crate::drive::Plan;
use crate::http::HttpsClient;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-load",
    about = "Load and check POST /v1/transactions"
)]
struct Args {
    /// Gateway base URL (loopback only).
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// CA that signed the gateway's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    cacert: PathBuf,
    /// HS256 development secret used to sign tokens (as the gateway's);
    /// defaults to `.env`'s when run from the repository.
    #[arg(
        long,
        env = "SWITCHBOARD__AUTH__DEV_HS256_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// Total requests (bounded).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Accounts to create and spread requests over (request i uses account i % N).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Opening balance of each account, minor units.
    #[arg(long, default_value_t = 10_000)]
    balance: i64,
    /// Amount of each debit, minor units.
    #[arg(long, default_value_t = 2)]
    amount: i64,
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// Prefix of transaction and account ids; default: a fresh random one.
    #[arg(long)]
    run_id: Option<String>,
    /// Stop issuing new requests after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_duration_s: u64,
    /// Also print latency per window of this many seconds (by request start).
    #[arg(long)]
    window_s: Option<u64>,
    /// Instead of load: open this many TLS keep-alive connections, make one
    /// request on each, and hold them idle for --hold-s seconds.
    #[arg(long)]
    idle_connections: Option<usize>,
    #[arg(long, default_value_t = 30)]
    hold_s: u64,
    /// Connect from this local address (e.g. 127.0.0.2, to be another client IP).
    #[arg(long)]
    local_ip: Option<std::net::IpAddr>,
    /// Send invalid tokens (a flood); no accounts are created. Answers of
    /// 401 and 429 count as expected.
    #[arg(long)]
    garbage_tokens: bool,
}

fn main() -> ExitCode {
    // The same development secret as the gateway, when run from the repository.
    let _ = dotenvy::dotenv();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("switchboard-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    check_loopback(&args.url)?;
    switchboard::edge::tls::install_crypto_provider();
    let roots = switchboard::edge::tls::root_store(&args.cacert)?;
    if let Some(n) = args.idle_connections {
        return hold_idle(&args, roots, n).await;
    }
    let client = http::client(roots, args.local_ip, args.concurrency);
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let tokens = Tokens::sign(&args, &run_id)?;
    let accounts: Vec<String> = (0..args.accounts.max(1))
        .map(|i| format!("{run_id}-acct-{i}"))
        .collect();
    if !args.garbage_tokens {
        create_accounts(&client, &args, &tokens, &accounts).await?;
    }
    eprintln!(
        "run {run_id}: {} requests, concurrency {}, {} account(s) of {} {}, amount {}",
        args.requests,
        args.concurrency,
        accounts.len(),
        args.balance,
        args.currency,
        args.amount
    );
    let plan = Arc::new(Plan {
        client: client.clone(),
        url: args.url.clone(),
        token: tokens.transact,
        run_id,
        accounts: accounts.clone(),
        requests: args.requests,
        amount: args.amount,
        currency: args.currency.clone(),
        garbage: args.garbage_tokens,
        deadline: Instant::now() + Duration::from_secs(args.max_duration_s),
    });
    let (mut tally, elapsed) = drive::run(plan, args.concurrency.max(1)).await?;
    report::summary(&mut tally, elapsed, args.window_s);
    if !args.garbage_tokens {
        report::balances(&client, &args.url, &tokens.operator, &accounts).await?;
    }
    report::unexpected(&tally);
    Ok(tally.all_expected())
}

/// The tool only ever loads a gateway on this machine.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "--url must point at loopback (got {url})"
    );
    Ok(())
}

/// The tokens of a run: an operator (accounts) and the client that transacts.
struct Tokens {
    operator: String,
    transact: String,
    client_id: String,
}

impl Tokens {
    /// Signed with the development secret, as the gateway's default config
    /// verifies them.
    fn sign(args: &Args, run_id: &str) -> anyhow::Result<Self> {
        let auth_cfg = switchboard::config::Config::from_toml("")
            .map_err(|e| anyhow::anyhow!(e.to_string()))?
            .auth;
        let secret = args.secret.clone().ok_or_else(|| {
            anyhow::anyhow!("--secret (or SWITCHBOARD__AUTH__DEV_HS256_SECRET) is required")
        })?;
        let auth = switchboard::edge::Authenticator::new(&switchboard::config::AuthConfig {
            dev_hs256_secret: Some(SecretString::from(secret)),
            ..auth_cfg
        })?;
        let client_id = format!("{run_id}-client");
        Ok(Self {
            operator: auth.sign("load-operator", &["operator", "auditor"], 3600)?,
            transact: auth.sign(&client_id, &["transact"], 3600)?,
            client_id,
        })
    }
}

async fn create_accounts(
    client: &HttpsClient,
    args: &Args,
    tokens: &Tokens,
    accounts: &[String],
) -> anyhow::Result<()> {
    for account in accounts {
        let body = serde_json::json!({
            "accountId": account, "owner": tokens.client_id,
            "currency": args.currency, "openingBalance": args.balance,
        });
        let (status, text, _) =
            http::post(client, &args.url, "/v1/accounts", &tokens.operator, &body).await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "creating {account}: {status} {text}"
        );
    }
    Ok(())
}

/// Opens `n` TLS connections, makes one keep-alive request on each, holds
/// them idle, then closes them. For measuring the gateway's memory per
/// connection from outside (`ps -o rss`).
async fn hold_idle(args: &Args, roots: rustls::RootCertStore, n: usize) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = args
        .url
        .strip_prefix("https://")
        .unwrap_or(&args.url)
        .trim_end_matches('/')
        .to_owned();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (connector, name, addr, permits) = (
            connector.clone(),
            name.clone(),
            addr.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await?;
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let mut stream = connector.connect(name, tcp).await?;
            stream
                .write_all(b"GET /keepalive HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut buf = vec![0u8; 2048];
            let read = stream.read(&mut buf).await?;
            anyhow::ensure!(
                buf[..read].starts_with(b"HTTP/1.1 404"),
                "unexpected answer"
            );
            Ok::<_, anyhow::Error>(stream)
        });
    }
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(stream) => conns.push(stream),
            Err(_) => failed += 1,
        }
    }
    println!(
        "opened {} idle TLS keep-alive connections ({failed} failed) in {:.1} s; holding {} s",
        conns.len(),
        started.elapsed().as_secs_f64(),
        args.hold_s
    );
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    drop(conns);
    Ok(failed == 0)
}
