//! `switchboard sim`: a real implementation of the switch protocol (docs/design.md,
//! "Switch protocol") for demos and tests.
//!
//! The sim remembers every outcome it recorded (in memory, and optionally in an
//! append-only JSON-lines state file) so tests can prove that nothing ran twice.
//! Its behaviour is driven by a [`Mode`] that can change at run time
//! (`PUT /faults`, [`SimHandle::set_faults`]); a `watch` channel carries the
//! faults so that requests hanging in `hang-after-receive` wake when it changes.
//!
//! With [`SimOptions::tls`] the sim speaks HTTPS only (TLS 1.2 and 1.3), and with
//! a client CA it also requires a client certificate (mTLS), like a real switch.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Largest request body accepted (413 beyond).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request hanging in `hang-after-receive` gives up and closes after this.
const MAX_HANG: Duration = Duration::from_secs(600);
/// Upper bound on `latencyMs`, so every wait stays bounded.
const MAX_LATENCY_MS: u64 = 600_000;
/// Time in-flight requests get after shutdown before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long [`SimHandle::shutdown`] waits for the server task before aborting it.
const HANDLE_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// Back-off after a failed `accept` (e.g. out of file descriptors), to avoid spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A TLS handshake not finished within this closes the connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the sim treats requests; see docs/design.md "The simulated switch".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    Decline,
    Slow,
    Down,
    Error,
    Flaky,
    HangAfterReceive,
}

const ALL_MODES: [Mode; 7] = [
    Mode::Healthy,
    Mode::Decline,
    Mode::Slow,
    Mode::Down,
    Mode::Error,
    Mode::Flaky,
    Mode::HangAfterReceive,
];

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Decline => "decline",
            Mode::Slow => "slow",
            Mode::Down => "down",
            Mode::Error => "error",
            Mode::Flaky => "flaky",
            Mode::HangAfterReceive => "hang-after-receive",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ALL_MODES
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = ALL_MODES.iter().map(|m| m.as_str()).collect();
                format!("unknown mode {s:?}; valid modes: {}", valid.join(", "))
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Used in `/health` and as the prefix of references (`<name>-<seq>`).
    pub name: String,
    pub mode: Mode,
    /// Delay added to each `POST /transactions` in `slow` mode.
    pub latency_ms: u64,
    /// Probability in [0, 1] that a `POST` fails with 500 in `flaky` mode.
    pub fail_rate: f64,
    /// JSON-lines file of recorded outcomes; loaded on bind, appended (and fsynced) per record.
    pub state_file: Option<PathBuf>,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<SimTls>,
}

/// The sim's TLS identity, and the CA its clients' certificates must chain to.
#[derive(Debug, Clone)]
pub struct SimTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// With a CA (PEM), every client must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl SimTls {
    /// The rustls configuration: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
    fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        crate::edge::tls::install_crypto_provider();
        let certs = crate::edge::tls::load_certs(&self.cert).context("sim TLS certificate")?;
        let key = crate::edge::tls::load_key(&self.key).context("sim TLS key")?;
        let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ]);
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = crate::edge::tls::root_store(ca).context("sim client CA")?;
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .with_context(|| format!("sim client CA {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "sim TLS certificate {} and key {}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        // hyper-util's auto builder serves either protocol on the same connection type.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl SimOptions {
    /// Healthy, no latency, fail rate 0.5, memory only, plain HTTP.
    pub fn new(name: impl Into<String>) -> Self {
        SimOptions {
            name: name.into(),
            mode: Mode::Healthy,
            latency_ms: 0,
            fail_rate: 0.5,
            state_file: None,
            tls: None,
        }
    }
}

/// Counts of distinct transactions recorded, and of repeated ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub received: u64,
    pub approved: u64,
    pub declined: u64,
    pub duplicates: u64,
}

/// What the sim recorded for a transaction id: `approved` with a reference, or
/// `declined` with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Outcome {
    fn approved(reference: String) -> Self {
        Outcome {
            status: "approved".into(),
            reference: Some(reference),
            reason: None,
        }
    }

    fn declined(reason: &str) -> Self {
        Outcome {
            status: "declined".into(),
            reference: None,
            reason: Some(reason.into()),
        }
    }
}

/// A bound sim that is not serving yet.
pub struct Sim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Present when serving HTTPS.
    tls: Option<TlsAcceptor>,
}

impl Sim {
    /// Binds (port 0 allowed), loads the TLS files and the state file if given.
    /// Does not serve yet.
    pub async fn bind(addr: SocketAddr, opts: SimOptions) -> anyhow::Result<Sim> {
        anyhow::ensure!(!opts.name.is_empty(), "sim name must not be empty");
        check_fail_rate(opts.fail_rate).map_err(anyhow::Error::msg)?;
        check_latency_ms(opts.latency_ms).map_err(anyhow::Error::msg)?;
        let tls = match &opts.tls {
            Some(tls) => Some(TlsAcceptor::from(tls.server_config()?)),
            None => None,
        };

        let mut book = Book::new();
        let store = match &opts.state_file {
            Some(path) => {
                let (store, entries) = Store::open(path).await?;
                for (id, outcome) in entries {
                    book.load(id, outcome, &opts.name);
                }
                info!(sim = %opts.name, path = %path.display(), received = book.stats.received,
                    "loaded sim state");
                Some(tokio::sync::Mutex::new(store))
            }
            None => None,
        };

        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding sim {:?} to {addr}", opts.name))?;
        let addr = listener.local_addr().context("sim local address")?;
        let faults = Faults {
            mode: opts.mode,
            latency_ms: opts.latency_ms,
            fail_rate: opts.fail_rate,
        };
        let shared = Arc::new(Shared {
            name: opts.name,
            book: Mutex::new(book),
            store,
            faults: watch::Sender::new(faults),
            conns: Mutex::new(Conns::default()),
            closing: CancellationToken::new(),
        });
        Ok(Sim {
            listener,
            addr,
            shared,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this sim serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting and returns
    /// (in-flight requests get at most [`SHUTDOWN_GRACE`]).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Sim {
            listener,
            addr,
            shared,
            tls,
        } = self;
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let mode = shared.faults().mode;
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(sim = %shared.name, %addr, %mode, scheme, "sim listening");

        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    shared.serve(stream, peer, tls.clone(), Arc::clone(&builder));
                }
                Err(e) => {
                    warn!(sim = %shared.name, error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }

        drop(listener);
        // Connections finish their current request and close; hanging requests give up now.
        shared.closing.cancel();
        let mut tasks = std::mem::take(&mut shared.conns().tasks);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(sim = %shared.name, open = tasks.len(), "dropping connections still open after grace period");
            tasks.shutdown().await;
        }
        info!(sim = %shared.name, %addr, "sim stopped");
        Ok(())
    }
}

/// A sim running as a tokio task, for tests and `switchboard demo`.
///
/// Dropping the handle does not stop the sim; call [`SimHandle::shutdown`] or
/// [`SimHandle::kill`] (tasks also end with their runtime).
pub struct SimHandle {
    pub addr: SocketAddr,
    pub name: String,
    tls: bool,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Binds and starts serving on a tokio task.
pub async fn spawn(addr: SocketAddr, opts: SimOptions) -> anyhow::Result<SimHandle> {
    let sim = Sim::bind(addr, opts).await?;
    let addr = sim.local_addr();
    let tls = sim.is_tls();
    let shared = Arc::clone(&sim.shared);
    let stop = CancellationToken::new();
    let task = tokio::spawn(sim.run(stop.clone()));
    Ok(SimHandle {
        addr,
        name: shared.name.clone(),
        tls,
        shared,
        stop,
        task,
    })
}

impl SimHandle {
    /// Base URL: `http://127.0.0.1:PORT` (an unspecified bind address maps to loopback),
    /// or with TLS `https://localhost:PORT`, a name the development server certificate
    /// covers (a sim bound to a specific non-loopback address keeps that address).
    pub fn url(&self) -> String {
        if self.tls {
            let ip = self.addr.ip();
            return if ip.is_loopback() || ip.is_unspecified() {
                format!("https://localhost:{}", self.addr.port())
            } else {
                format!("https://{}", self.addr)
            };
        }
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// Graceful: stop accepting, let in-flight requests finish (bounded), then return.
    pub async fn shutdown(self) {
        let SimHandle {
            name,
            stop,
            mut task,
            ..
        } = self;
        stop.cancel();
        match tokio::time::timeout(HANDLE_SHUTDOWN_LIMIT, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(sim = %name, error = %e, "sim failed"),
            Ok(Err(e)) => warn!(sim = %name, error = %e, "sim task failed"),
            Err(_) => {
                warn!(sim = %name, "sim did not stop in time; aborting");
                task.abort();
            }
        }
    }

    /// Abrupt, like a killed process: the listener closes and every open
    /// connection is reset without an answer. Recorded state stays readable
    /// through [`SimHandle::stats`] and [`SimHandle::outcome`].
    pub fn kill(&self) {
        self.shared.kill();
        self.task.abort();
        info!(sim = %self.name, addr = %self.addr, "sim killed");
    }

    /// Current counters, read in-process.
    pub async fn stats(&self) -> Stats {
        self.shared.book().stats
    }

    /// Like `PUT /faults`; `None` keeps the current value. Out-of-range values are clamped.
    pub fn set_faults(&self, mode: Mode, latency_ms: Option<u64>, fail_rate: Option<f64>) {
        let fail_rate = fail_rate.map(|r| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) });
        let latency_ms = latency_ms.map(|ms| ms.min(MAX_LATENCY_MS));
        self.shared.set_faults(mode, latency_ms, fail_rate);
    }

    /// What this sim recorded under `key` (the `Idempotency-Key` it was
    /// sent), if anything.
    pub fn outcome(&self, key: &str) -> Option<Outcome> {
        self.shared.book().outcomes.get(key).cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Faults {
    mode: Mode,
    latency_ms: u64,
    fail_rate: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FaultsView {
    mode: &'static str,
    latency_ms: u64,
    fail_rate: f64,
}

impl From<Faults> for FaultsView {
    fn from(f: Faults) -> Self {
        FaultsView {
            mode: f.mode.as_str(),
            latency_ms: f.latency_ms,
            fail_rate: f.fail_rate,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultsUpdate {
    mode: String,
    latency_ms: Option<u64>,
    fail_rate: Option<f64>,
}

fn check_fail_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("failRate must be within [0, 1], got {rate}"))
    }
}

fn check_latency_ms(ms: u64) -> Result<(), String> {
    if ms <= MAX_LATENCY_MS {
        Ok(())
    } else {
        Err(format!(
            "latencyMs must be at most {MAX_LATENCY_MS}, got {ms}"
        ))
    }
}

/// Everything recorded, guarded by one std mutex (never held across `.await`).
struct Book {
    outcomes: HashMap<String, Outcome>,
    stats: Stats,
    /// Next reference number; never reused, also across restarts with a state file.
    next_seq: u64,
}

impl Book {
    fn new() -> Self {
        Book {
            outcomes: HashMap::new(),
            stats: Stats::default(),
            next_seq: 1,
        }
    }

    fn record(&mut self, id: String, outcome: Outcome) {
        self.stats.received += 1;
        match outcome.status.as_str() {
            "approved" => self.stats.approved += 1,
            _ => self.stats.declined += 1,
        }
        self.outcomes.insert(id, outcome);
    }

    /// Adds an entry from the state file and moves the sequence past its reference.
    fn load(&mut self, id: String, outcome: Outcome, name: &str) {
        // Skip every reference in the file, even one of a repeated line.
        let seq = outcome
            .reference
            .as_deref()
            .and_then(|r| r.strip_prefix(name)?.strip_prefix('-')?.parse::<u64>().ok());
        if let Some(seq) = seq {
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
        }
        if !self.outcomes.contains_key(&id) {
            // The first outcome is the one that was answered.
            self.record(id, outcome);
        }
    }
}

/// One line of the state file.
#[derive(Serialize, Deserialize)]
struct StateLine {
    id: String,
    status: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// The state file's single writer.
struct Store {
    path: PathBuf,
    file: tokio::fs::File,
    /// The file may end in a partial line (crash or failed write): start the next on a new line.
    torn: bool,
}

impl Store {
    async fn open(path: &Path) -> anyhow::Result<(Store, Vec<(String, Outcome)>)> {
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .await
            .with_context(|| format!("opening sim state file {}", path.display()))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .await
            .with_context(|| format!("reading sim state file {}", path.display()))?;

        let mut entries = Vec::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = serde_json::from_slice::<StateLine>(line)
                .ok()
                .filter(|l| matches!(l.status.as_str(), "approved" | "declined"));
            match parsed {
                Some(l) => entries.push((
                    l.id,
                    Outcome {
                        status: l.status,
                        reference: l.reference,
                        reason: l.reason,
                    },
                )),
                // Refuse to append to something that is not ours.
                None if index == 0 => anyhow::bail!(
                    "{} does not look like a sim state file (first line is not an outcome)",
                    path.display()
                ),
                // A torn line from a crash mid-write; that outcome was never answered.
                None => {
                    warn!(path = %path.display(), line = index + 1, "skipping unreadable state line")
                }
            }
        }
        let torn = text.last().is_some_and(|&b| b != b'\n');
        let store = Store {
            path: path.to_owned(),
            file,
            torn,
        };
        Ok((store, entries))
    }

    /// Appends one outcome and makes it durable before the caller answers.
    async fn append(&mut self, id: &str, outcome: &Outcome) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(128);
        if self.torn {
            buf.push(b'\n');
        }
        let line = StateLine {
            id: id.to_owned(),
            status: outcome.status.clone(),
            reference: outcome.reference.clone(),
            reason: outcome.reason.clone(),
        };
        serde_json::to_writer(&mut buf, &line)?;
        buf.push(b'\n');
        let file = &mut self.file;
        let written = async {
            file.write_all(&buf).await?;
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        self.torn = written.is_err();
        written
    }
}

#[derive(Default)]
struct Conns {
    /// Connection tasks, owned here so `kill` can abort them (which drops their sockets).
    tasks: JoinSet<()>,
    killed: bool,
}

struct Shared {
    name: String,
    book: Mutex<Book>,
    /// Present with a state file; its lock serializes deciding and persisting new outcomes.
    store: Option<tokio::sync::Mutex<Store>>,
    faults: watch::Sender<Faults>,
    conns: Mutex<Conns>,
    /// Cancelled on shutdown or kill: hanging requests stop waiting.
    closing: CancellationToken,
}

/// The service gave up on a request: hyper closes the connection without an answer.
#[derive(Debug, thiserror::Error)]
enum HangUp {
    #[error("gave up after hanging for {} s", MAX_HANG.as_secs())]
    TimedOut,
    #[error("sim is shutting down")]
    Closing,
}

type Resp = Response<Full<Bytes>>;

enum Submitted {
    Recorded(Outcome),
    Duplicate(Outcome),
    Refused(Resp),
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    fn set_faults(&self, mode: Mode, latency_ms: Option<u64>, fail_rate: Option<f64>) -> Faults {
        // `send_modify` notifies even with no receivers subscribed yet.
        self.faults.send_modify(|f| {
            f.mode = mode;
            if let Some(ms) = latency_ms {
                f.latency_ms = ms;
            }
            if let Some(rate) = fail_rate {
                f.fail_rate = rate;
            }
        });
        let now = self.faults();
        info!(sim = %self.name, mode = %now.mode, latency_ms = now.latency_ms,
            fail_rate = now.fail_rate, "faults changed");
        now
    }

    fn kill(&self) {
        let mut conns = self.conns();
        conns.killed = true;
        conns.tasks.abort_all();
        drop(conns);
        // Wakes requests on tasks outside the set (HTTP/2 streams run on their own tasks).
        self.closing.cancel();
    }

    fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        builder: Arc<auto::Builder<TokioExecutor>>,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(sim = %self.name, error = %e, "set_nodelay failed");
        }
        let shared = Arc::clone(self);
        let task = async move {
            let Some(acceptor) = tls else {
                return shared.serve_http(stream, peer, builder).await;
            };
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        debug!(sim = %shared.name, %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(sim = %shared.name, %peer, "TLS handshake timed out");
                        return;
                    }
                },
                // Shutting down: a connection that has not started talking HTTP just closes.
                _ = shared.closing.cancelled() => return,
            };
            shared.serve_http(stream, peer, builder).await;
        };

        let mut conns = self.conns();
        if conns.killed {
            return; // Dropping the stream resets it, as a dead process would.
        }
        while conns.tasks.try_join_next().is_some() {}
        conns.tasks.spawn(task);
    }

    /// Serves HTTP/1.1 or HTTP/2 on one connection until it ends or the sim closes.
    async fn serve_http<IO>(
        self: Arc<Self>,
        io: IO,
        peer: SocketAddr,
        builder: Arc<auto::Builder<TokioExecutor>>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let closing = self.closing.clone();
        let name = self.name.clone();
        let service = service_fn(move |req| Arc::clone(&self).handle(req));
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            _ = closing.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            debug!(sim = %name, %peer, error = %e, "connection ended with error");
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Resp, HangUp> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        debug!(sim = %self.name, %method, %path, "request");
        let resp = match path.as_str() {
            "/transactions" => match method {
                Method::POST => self.post_transaction(req).await?,
                _ => method_not_allowed("POST"),
            },
            "/health" => match method {
                Method::GET => self.health().await?,
                _ => method_not_allowed("GET"),
            },
            "/stats" => match method {
                Method::GET => json(StatusCode::OK, &self.book().stats),
                _ => method_not_allowed("GET"),
            },
            "/faults" => match method {
                Method::GET => json(StatusCode::OK, &FaultsView::from(self.faults())),
                Method::PUT => self.put_faults(req).await,
                _ => method_not_allowed("GET, PUT"),
            },
            other => match other.strip_prefix("/transactions/") {
                Some(raw) if !raw.is_empty() && !raw.contains('/') => match method {
                    Method::GET => self.get_transaction(raw).await?,
                    _ => method_not_allowed("GET"),
                },
                // Not the protocol's `not_found` (which only a lookup of an id
                // answers): a wrong path proves nothing about any transaction.
                _ => json(
                    StatusCode::NOT_FOUND,
                    &json!({"status": "no_route", "reason": format!("no route for {other}")}),
                ),
            },
        };
        debug!(sim = %self.name, %method, %path, status = resp.status().as_u16(), "response");
        Ok(resp)
    }

    async fn post_transaction(&self, req: Request<Incoming>) -> Result<Resp, HangUp> {
        let id = match read_key(req).await {
            Ok(id) => id,
            Err(resp) => return Ok(resp),
        };
        let mut faults = self.faults();
        if faults.mode == Mode::Slow && faults.latency_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(faults.latency_ms)) => {}
                _ = self.closing.cancelled() => return Err(HangUp::Closing),
            }
            faults = self.faults(); // The mode may have changed while we slept.
        }
        let outcome = match self.submit(&id, faults).await {
            Submitted::Recorded(outcome) => {
                debug!(sim = %self.name, %id, status = %outcome.status, "recorded");
                outcome
            }
            Submitted::Duplicate(outcome) => {
                debug!(sim = %self.name, %id, "duplicate");
                outcome
            }
            Submitted::Refused(resp) => return Ok(resp),
        };
        if faults.mode == Mode::HangAfterReceive {
            self.wait_while_hanging().await?;
        }
        Ok(json(StatusCode::OK, &outcome))
    }

    /// Records a new transaction per the faults, or returns the first outcome for a repeated id.
    async fn submit(&self, id: &str, faults: Faults) -> Submitted {
        // With a state file, deciding and persisting happen under the writer lock, so a
        // concurrent repeat of the id waits and then sees the durable first outcome.
        let mut store = match &self.store {
            Some(store) => Some(store.lock().await),
            None => None,
        };
        let outcome = {
            let mut book = self.book();
            if let Some(first) = book.outcomes.get(id).cloned() {
                book.stats.duplicates += 1;
                return Submitted::Duplicate(first);
            }
            let outcome = match faults.mode {
                Mode::Down => {
                    return Submitted::Refused(json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "not_processed"}),
                    ));
                }
                Mode::Error => return Submitted::Refused(error_500()),
                Mode::Flaky if rand::random::<f64>() < faults.fail_rate => {
                    return Submitted::Refused(error_500());
                }
                Mode::Decline => Outcome::declined("declined"),
                Mode::Healthy | Mode::Slow | Mode::Flaky | Mode::HangAfterReceive => {
                    let seq = book.next_seq;
                    book.next_seq += 1;
                    Outcome::approved(format!("{}-{seq}", self.name))
                }
            };
            if store.is_none() {
                book.record(id.to_owned(), outcome.clone());
                return Submitted::Recorded(outcome);
            }
            outcome
        };
        if let Some(store) = store.as_mut()
            && let Err(e) = store.append(id, &outcome).await
        {
            warn!(sim = %self.name, path = %store.path.display(), error = %e, "state file write failed");
            return Submitted::Refused(json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"status": "error", "reason": "state file write failed"}),
            ));
        }
        self.book().record(id.to_owned(), outcome.clone());
        Submitted::Recorded(outcome)
    }

    async fn get_transaction(&self, raw_id: &str) -> Result<Resp, HangUp> {
        let Some(id) = percent_decode(raw_id) else {
            return Ok(json(
                StatusCode::BAD_REQUEST,
                &json!({"status": "invalid", "reason": "bad percent-encoding in id"}),
            ));
        };
        self.wait_while_hanging().await?;
        let found = self.book().outcomes.get(&id).cloned();
        Ok(match found {
            Some(outcome) => json(StatusCode::OK, &outcome),
            // The protocol's proof of "never received": it names the key looked up.
            None => json(
                StatusCode::NOT_FOUND,
                &json!({"status": "not_found", "idempotencyKey": id}),
            ),
        })
    }

    async fn health(&self) -> Result<Resp, HangUp> {
        self.wait_while_hanging().await?;
        Ok(match self.faults().mode {
            Mode::Down => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "down", "name": self.name}),
            ),
            _ => json(StatusCode::OK, &json!({"status": "ok", "name": self.name})),
        })
    }

    async fn put_faults(&self, req: Request<Incoming>) -> Resp {
        let body = match read_body(req).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let update: FaultsUpdate = match serde_json::from_slice(&body) {
            Ok(u) => u,
            Err(e) => return invalid(format!("bad faults body: {e}")),
        };
        let mode = match update.mode.parse::<Mode>() {
            Ok(m) => m,
            Err(e) => return invalid(e),
        };
        let checked = update
            .fail_rate
            .map_or(Ok(()), check_fail_rate)
            .and(update.latency_ms.map_or(Ok(()), check_latency_ms));
        if let Err(e) = checked {
            return invalid(e);
        }
        let now = self.set_faults(mode, update.latency_ms, update.fail_rate);
        json(StatusCode::OK, &FaultsView::from(now))
    }

    /// Returns once the mode is not `hang-after-receive` (at once if it is not).
    async fn wait_while_hanging(&self) -> Result<(), HangUp> {
        let mut faults = self.faults.subscribe();
        let changed = faults.wait_for(|f| f.mode != Mode::HangAfterReceive);
        tokio::select! {
            changed = tokio::time::timeout(MAX_HANG, changed) => match changed {
                Ok(Ok(_)) => Ok(()),
                // The sender lives in `Shared`, which we hold: only the timeout is possible.
                Ok(Err(_)) | Err(_) => Err(HangUp::TimedOut),
            },
            _ = self.closing.cancelled() => Err(HangUp::Closing),
        }
    }
}

/// Reads the body within [`MAX_BODY_BYTES`]; the error is the response to send.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"status": "invalid", "reason": format!("body larger than {MAX_BODY_BYTES} bytes")}),
        )),
        Err(e) => Err(invalid(format!("could not read body: {e}"))),
    }
}

/// The key a transaction is recorded under: the `Idempotency-Key` header
/// (what the gateway sends: its reference, unique across its clients), else,
/// for a request written by hand, the body's `transactionId`. The body must
/// be a JSON object either way.
async fn read_key(req: Request<Incoming>) -> Result<String, Resp> {
    let header_id = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let body = read_body(req).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(invalid("body must be a JSON object".into()));
    };
    if let Some(key) = header_id {
        return Ok(key);
    }
    match object.get("transactionId") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(serde_json::Value::String(_) | serde_json::Value::Null) | None => Err(invalid(
            "missing Idempotency-Key header (and transactionId in body)".into(),
        )),
        Some(_) => Err(invalid("transactionId must be a string".into())),
    }
}

/// Decodes `%XX` escapes in a path segment; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, body: &impl Serialize) -> Resp {
    crate::edge::json_response(status, body)
}

fn invalid(reason: String) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        &json!({"status": "invalid", "reason": reason}),
    )
}

fn error_500() -> Resp {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"status": "error"}),
    )
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"status": "method_not_allowed", "allow": allow}),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_errors_list_valid_modes() {
        for mode in ALL_MODES {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
        }
        let err = "sideways".parse::<Mode>().unwrap_err();
        assert!(
            err.contains("hang-after-receive") && err.contains("healthy"),
            "{err}"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc-1").as_deref(), Some("abc-1"));
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%+f"), None);
    }

    #[test]
    fn loading_continues_the_reference_sequence() {
        let mut book = Book::new();
        book.load("a".into(), Outcome::approved("s-7".into()), "s");
        book.load("b".into(), Outcome::approved("other-99".into()), "s");
        book.load("c".into(), Outcome::declined("declined"), "s");
        book.load("a".into(), Outcome::approved("s-8".into()), "s");
        assert_eq!(book.next_seq, 9);
        assert_eq!(book.outcomes["a"].reference.as_deref(), Some("s-7"));
        assert_eq!(
            book.stats,
            Stats {
                received: 3,
                approved: 2,
                declined: 1,
                duplicates: 0
            }
        );
    }
}
