//! The application: built from a validated [`Config`], bound, then run until
//! a shutdown signal.
//!
//! `build` does every fallible start-up step (TLS files, ledger connection and
//! migrations, binding both listeners) so that `run` only serves. Tests bind
//! port 0 and read the addresses back.

pub mod reload;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::app::reload::Reloader;
use crate::config::{Config, ForwardingConfig, LedgerConfig, Sources};
use crate::edge::answer::RENDER;
use crate::edge::api::{Api, AppState};
use crate::edge::auth::Authenticator;
use crate::edge::limits::Limiter;
use crate::edge::server::{self, ConnLimits};
use crate::edge::tls::{self, TlsError};
use crate::ledger::{GroupConfig, Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::switches::HealthMonitor;
use crate::switches::{SwitchClient, Switches};
use crate::transactions::{Reconciler, Transactions};

/// Most connections the ops listener keeps open.
const OPS_CONNECTIONS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("auth keys: {0}")]
    Auth(#[from] crate::edge::auth::AuthError),
}

pub struct Application {
    state: Arc<AppState>,
    /// For the health monitor and the reconciler (requests reach switches
    /// through `state.transactions`).
    switch_client: SwitchClient,
    https: TcpListener,
    ops: TcpListener,
    acceptor: TlsAcceptor,
    /// Where the config came from, for live reloads; `None`: no reloads.
    sources: Option<Sources>,
}

impl Application {
    /// Builds with a fixed configuration (tests, `demo`).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_sources(config, None).await
    }

    /// Builds with the sources `config` was read from, so that file changes
    /// and SIGHUP reload it.
    pub async fn build_with_sources(
        config: Config,
        sources: Option<Sources>,
    ) -> Result<Self, StartError> {
        let tls = tls::server_config(&config.server)?;
        let switch_tls = switch_tls_config(&config.forwarding)?;
        let auth = Authenticator::new(&config.auth)?;
        let ledger = Ledger::connect_with(&config.database, batching(&config.ledger)).await?;
        if config.database.migrate_on_start {
            ledger.migrate().await?;
        }
        let bind = |addr| server::bind(addr).map_err(|source| StartError::Bind { addr, source });
        let https = bind(config.server.listen)?;
        let ops = bind(config.server.ops_listen)?;

        let switches = Arc::new(Switches::new(
            &config.switches,
            config.health.passive_failures_max,
        ));
        let metrics = Metrics::new();
        metrics.register_all(ledger.collectors());
        let switch_client = SwitchClient::new(&config.forwarding, switch_tls);
        let transactions = Transactions::new(
            ledger.clone(),
            switches.clone(),
            switch_client.clone(),
            metrics.clone(),
            RENDER,
        );
        let state = AppState {
            auth: Arc::new(ArcSwap::from_pointee(auth)),
            metrics,
            switches,
            limiter: Arc::new(Limiter::new(&config.limits)),
            ledger,
            config: Arc::new(ArcSwap::from_pointee(config)),
            ready: Default::default(),
            transactions,
        };
        tracing::info!(
            ledger = state.ledger.backend_name(),
            switches = state.switches.snapshot().entries.len(),
            "switchboard built"
        );
        Ok(Self {
            state: Arc::new(state),
            switch_client,
            https,
            ops,
            acceptor: TlsAcceptor::from(tls),
            sources,
        })
    }

    /// The bound HTTPS address (the real port when configured with port 0).
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .unwrap_or(self.state.config.load().server.listen)
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops
            .local_addr()
            .unwrap_or(self.state.config.load().server.ops_listen)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish within the grace period, and closes the ledger.
    pub async fn run(self, shutdown: CancellationToken) {
        let state = self.state;
        let config = state.config.load_full();
        let cfg = &config.server;
        let tracker = TaskTracker::new();

        // Switches are probed before the gateway reports ready.
        let monitor = HealthMonitor {
            switches: state.switches.clone(),
            client: self.switch_client.clone(),
            config: state.config.clone(),
            metrics: state.metrics.clone(),
        };
        monitor.probe_all().await;
        tracker.spawn(monitor.run(shutdown.clone()));
        tracker.spawn(
            Reconciler {
                ledger: state.ledger.clone(),
                switches: state.switches.clone(),
                client: self.switch_client.clone(),
                config: state.config.clone(),
                metrics: state.metrics.clone(),
                render: RENDER,
            }
            .run(shutdown.clone()),
        );
        tracker.spawn(housekeeping(state.clone(), shutdown.clone()));
        if let Some(sources) = self.sources {
            tracker.spawn(
                Reloader {
                    sources,
                    auth: state.auth.clone(),
                    limiter: state.limiter.clone(),
                    config: state.config.clone(),
                    switches: state.switches.clone(),
                    metrics: state.metrics.clone(),
                }
                .run(shutdown.clone()),
            );
        }
        let limits = ConnLimits {
            header_read_timeout: cfg.header_read_timeout(),
            header_bytes_max: cfg.header_bytes_max,
            idle_timeout: cfg.keepalive_idle_timeout(),
            h2_streams_max: cfg.h2_streams_max,
        };
        state.ready.store(true, Ordering::Release);
        tracing::info!("ready");
        tokio::join!(
            server::serve_tls(
                self.https,
                self.acceptor,
                cfg.tls_handshake_timeout(),
                cfg.connections_max,
                limits.clone(),
                Api(state.clone()),
                state.metrics.clone(),
                shutdown.clone(),
                tracker.clone(),
            ),
            server::serve_plain(
                self.ops,
                OPS_CONNECTIONS_MAX,
                limits,
                Ops(state.clone()),
                state.metrics.clone(),
                shutdown.clone(),
                tracker.clone(),
            ),
        );
        // Both accept loops return only once shutdown began.
        state.ready.store(false, Ordering::Release);
        tracker.close();
        let grace = cfg.shutdown_grace();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            in_flight = tracker.len(),
            "draining"
        );
        state.transactions.tasks().close();
        let drained = async {
            tracker.wait().await;
            state.transactions.tasks().wait().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                connections = tracker.len(),
                transactions = state.transactions.tasks().len(),
                "grace period over; the reconciler finishes what is left"
            );
        }
        state.ledger.close().await;
        tracing::info!("stopped");
    }
}

/// Prunes the keyed rate limiters and refreshes the gauges of bounded
/// structures, every `limits.prune_interval_ms`, until `shutdown`.
async fn housekeeping(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let interval =
            std::time::Duration::from_millis(state.config.load().limits.prune_interval_ms);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        state.limiter.prune();
        report_sizes(&state);
    }
}

/// Sizes of the bounded structures, as gauges.
pub fn report_sizes(state: &AppState) {
    let (ip_keys, client_keys) = state.limiter.sizes();
    let m = &state.metrics;
    m.limiter_keys
        .with_label_values(&["ip"])
        .set(ip_keys as i64);
    m.limiter_keys
        .with_label_values(&["client"])
        .set(client_keys as i64);
    m.auth_cache_entries
        .set(state.auth.load().cache_len() as i64);
    m.transactions_in_flight
        .set(state.limiter.transactions_in_flight() as i64);
}

/// The group-commit bounds the ledger is started with, from `[ledger]`.
pub(crate) fn batching(cfg: &LedgerConfig) -> GroupConfig {
    GroupConfig {
        batch_max: cfg.batch_max,
        queue_max: cfg.queue_max,
        queue_wait: std::time::Duration::from_millis(cfg.queue_wait_ms),
        writers: cfg.writers,
    }
}

/// TLS for HTTPS switches: the configured CA bundle (else the public web PKI
/// roots), and a client certificate for switches that require mTLS.
fn switch_tls_config(cfg: &ForwardingConfig) -> Result<rustls::ClientConfig, TlsError> {
    tls::install_crypto_provider();
    let roots = match &cfg.ca_bundle {
        Some(path) => tls::root_store(path)?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    Ok(match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(tls::load_certs(cert)?, tls::load_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}
