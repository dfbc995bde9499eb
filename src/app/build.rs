//! Building the gateway: every fallible start-up step (TLS files, keys,
//! ledger connection and migrations, binding both listeners), so that
//! running it only serves.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ForwardingConfig, LedgerConfig, Sources};
use crate::edge::tls::{self, TlsError};
use crate::edge::{self, AppState, Authenticator, Limiter, RENDER, SharedLimits};
use crate::ledger::{GroupConfig, Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::switches::{BalanceSettings, SwitchClient, Switches};
use crate::transactions::Transactions;

/// Why the gateway could not start.
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
    Auth(#[from] crate::edge::AuthError),
    #[error("limits.redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The gateway, built and bound: [`Application::run`] serves it.
pub struct Application {
    pub(super) state: Arc<AppState>,
    /// For the health monitor and the reconciler (requests reach switches
    /// through `state.transactions`).
    pub(super) switch_client: SwitchClient,
    pub(super) https: TcpListener,
    pub(super) ops: TcpListener,
    pub(super) acceptor: TlsAcceptor,
    /// Where the config came from, for live reloads; `None`: no reloads.
    pub(super) sources: Option<Sources>,
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
        let bind = |addr| edge::bind(addr).map_err(|source| StartError::Bind { addr, source });
        let https = bind(config.server.listen)?;
        let ops = bind(config.server.ops_listen)?;

        let switches = Arc::new(Switches::new(
            &config.switches,
            config.health.passive_failures_max,
            BalanceSettings::from_config(&config.forwarding),
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
        let shared = SharedLimits::new(&config.limits.redis, &metrics)?;
        if let Some(url) = config.limits.redis.url_redacted() {
            tracing::info!(
                redis = %url,
                failure_mode = config.limits.redis.failure_mode.as_str(),
                "rate limits shared through Redis"
            );
        }
        let state = AppState {
            auth: Arc::new(ArcSwap::from_pointee(auth)),
            metrics,
            switches,
            limiter: Arc::new(Limiter::with_shared(&config.limits, shared)),
            ledger,
            config: Arc::new(ArcSwap::from_pointee(config)),
            ready: Default::default(),
            draining: Default::default(),
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
