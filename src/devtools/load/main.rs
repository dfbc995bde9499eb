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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secrecy::SecretString;

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

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    /// (start offset ms, latency us, ok) of every request, for windows.
    samples: Vec<(u64, u64, bool)>,
    outcomes: BTreeMap<String, usize>,
    bad: Vec<String>,
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

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn run(args: Args) -> anyhow::Result<bool> {
    let host = args
        .url
        .strip_prefix("https://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "--url must point at loopback (got {})",
        args.url
    );
    switchboard::edge::tls::install_crypto_provider();
    let roots = switchboard::edge::tls::root_store(&args.cacert)?;
    if let Some(n) = args.idle_connections {
        return hold_idle(&args, roots, n).await;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_local_address(args.local_ip);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: HttpsClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build(https);

    let auth_cfg = switchboard::config::Config::from_toml("")
        .map_err(|e| anyhow::anyhow!(e.to_string()))?
        .auth;
    let secret = args.secret.clone().ok_or_else(|| {
        anyhow::anyhow!("--secret (or SWITCHBOARD__AUTH__DEV_HS256_SECRET) is required")
    })?;
    let auth = switchboard::edge::auth::Authenticator::new(&switchboard::config::AuthConfig {
        dev_hs256_secret: Some(SecretString::from(secret)),
        ..auth_cfg
    })?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let client_id = format!("{run_id}-client");
    let operator = auth.sign("load-operator", &["operator", "auditor"], 3600)?;
    let token = auth.sign(&client_id, &["transact"], 3600)?;

    let accounts: Vec<String> = (0..args.accounts.max(1))
        .map(|i| format!("{run_id}-acct-{i}"))
        .collect();
    for account in accounts.iter().filter(|_| !args.garbage_tokens) {
        let body = serde_json::json!({
            "accountId": account, "owner": client_id,
            "currency": args.currency, "openingBalance": args.balance,
        });
        let (status, text, _) = post(&client, &args.url, "/v1/accounts", &operator, &body).await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "creating {account}: {status} {text}"
        );
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

    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_duration_s);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, accounts, token, url, run_id) = (
            client.clone(),
            next.clone(),
            accounts.clone(),
            token.clone(),
            args.url.clone(),
            run_id.clone(),
        );
        let (requests, amount, currency) = (args.requests, args.amount, args.currency.clone());
        let garbage = args.garbage_tokens;
        workers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= deadline {
                    break;
                }
                let id = format!("{run_id}-tx-{i}");
                let body = serde_json::json!({
                    "transactionId": id, "type": "debit",
                    "accountId": accounts[i % accounts.len()],
                    "amount": amount, "currency": currency,
                });
                let t0 = Instant::now();
                let token = if garbage {
                    format!("garbage.{i}.token")
                } else {
                    token.clone()
                };
                let result = post(&client, &url, "/v1/transactions", &token, &body).await;
                let latency_us = t0.elapsed().as_micros() as u64;
                tally.latencies_us.push(latency_us);
                let outcome = match result {
                    Ok((status, text, json)) => check(status, &text, json.as_ref(), &id, garbage),
                    Err(e) => Err(format!("transport: {e}")),
                };
                let offset_ms = t0.duration_since(started).as_millis() as u64;
                let ok = outcome.as_ref().is_ok_and(|l| {
                    l.starts_with("201") || l.starts_with("202") || l.contains("insufficient_funds")
                });
                tally.samples.push((offset_ms, latency_us, ok));
                match outcome {
                    Ok(label) => *tally.outcomes.entry(label).or_default() += 1,
                    Err(bad) => {
                        *tally.outcomes.entry("unexpected".into()).or_default() += 1;
                        if tally.bad.len() < 5 {
                            tally.bad.push(bad);
                        }
                    }
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(t) = workers.join_next().await {
        let t = t?;
        all.latencies_us.extend(t.latencies_us);
        all.samples.extend(t.samples);
        for (k, v) in t.outcomes {
            *all.outcomes.entry(k).or_default() += v;
        }
        all.bad.extend(t.bad);
    }
    let elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[idx] as f64 / 1000.0
    };
    let done = all.latencies_us.len();
    println!("requests      {done}");
    println!("wall time     {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput    {:.0} req/s",
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency ms    p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    for (outcome, n) in &all.outcomes {
        println!("outcome       {outcome:<24} {n}");
    }
    if let Some(w) = args.window_s.filter(|w| *w > 0) {
        let mut windows: BTreeMap<u64, Vec<(u64, bool)>> = BTreeMap::new();
        for (offset_ms, latency_us, ok) in &all.samples {
            windows
                .entry(offset_ms / (w * 1000))
                .or_default()
                .push((*latency_us, *ok));
        }
        for (i, mut v) in windows {
            v.sort_unstable();
            let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].0 as f64 / 1000.0;
            let failed = v.iter().filter(|(_, ok)| !ok).count();
            println!(
                "window {:>4}s  n {:>6}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  not-ok {failed}",
                i * w,
                v.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            );
        }
    }
    for account in accounts.iter().filter(|_| !args.garbage_tokens) {
        let (status, text, json) = get(
            &client,
            &args.url,
            &format!("/v1/accounts/{account}"),
            &operator,
        )
        .await?;
        let balance = json.as_ref().and_then(|j| j["balance"].as_i64());
        match balance {
            Some(b) if status == StatusCode::OK => println!("balance       {account} {b}"),
            _ => println!("balance       {account} unreadable: {status} {text}"),
        }
    }
    for bad in &all.bad {
        println!("unexpected    {bad}");
    }
    Ok(!all.outcomes.contains_key("unexpected"))
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

/// Labels an answer, or says why it is not one the API may give.
fn check(
    status: StatusCode,
    text: &str,
    json: Option<&serde_json::Value>,
    id: &str,
    garbage: bool,
) -> Result<String, String> {
    let Some(json) = json else {
        return Err(format!("{status}: not JSON: {text}"));
    };
    match status.as_u16() {
        201 | 202 if json["transactionId"] == id => Ok(format!(
            "{} {}",
            status.as_u16(),
            json["status"].as_str().unwrap_or("?")
        )),
        401 if !garbage => Err(format!("{status}: {text}")),
        401 | 409 | 422 | 429 | 503 => match json["error"]["code"].as_str() {
            Some(code) => Ok(format!("{} {code}", status.as_u16())),
            None => Err(format!("{status}: no error code: {text}")),
        },
        _ => Err(format!("{status}: {text}")),
    }
}

async fn post(
    client: &HttpsClient,
    base: &str,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    send(
        client,
        Method::POST,
        base,
        path,
        token,
        Bytes::from(body.to_string()),
    )
    .await
}

async fn get(
    client: &HttpsClient,
    base: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    send(client, Method::GET, base, path, token, Bytes::new()).await
}

async fn send(
    client: &HttpsClient,
    method: Method,
    base: &str,
    path: &str,
    token: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, String, Option<serde_json::Value>)> {
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).ok();
    Ok((status, text, json))
}
