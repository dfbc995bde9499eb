//! Running the gateway: the background tasks, both listeners, and the
//! stop: first the drain (`/readyz` 503 while still serving, so load
//! balancers stop sending), then the listeners close and what is in flight
//! finishes within the grace period.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Application;
use super::reload::Reloader;
use crate::config::ClientAddress;
use crate::edge::{self, Api, AppState, ConnLimits, Linger, RENDER};
use crate::ops::{Ops, Trends, sample_trends};
use crate::switches::HealthMonitor;
use crate::transactions::Reconciler;
use crate::webhooks::Deliverer;

/// Most connections the ops listener keeps open.
const OPS_CONNECTIONS_MAX: usize = 64;

impl Application {
    /// Serves until `shutdown` is cancelled; then drains (`/readyz` answers
    /// 503 while everything else still serves, for `server.shutdown_drain_ms`),
    /// stops accepting, lets in-flight requests finish within the grace
    /// period, and closes the ledger.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let state = self.state.clone();
        // What is bound at start keeps its running value: so do the drain
        // and the grace.
        let (drain_for, grace) = {
            let config = state.config.load();
            (
                config.server.shutdown_drain(),
                config.server.shutdown_grace(),
            )
        };
        // Everything runs until `stop`, which comes after the drain.
        let stop = CancellationToken::new();
        let trends = Arc::new(Trends::new(state.config.load().server.status_trend()));
        // Switches are probed before the gateway reports ready.
        self.spawn_background(&tracker, &stop).await;
        tracker.spawn(sample_trends(trends.clone(), state.clone(), stop.clone()));
        state.ready.store(true, Ordering::Release);
        tracing::info!("ready");
        let draining = {
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                shutdown.cancelled().await;
                drain_first(&state, drain_for).await;
                stop.cancel();
            }
        };
        let serving = serve(
            self.https,
            self.ops,
            self.acceptor,
            &state,
            trends,
            &stop,
            &tracker,
        );
        tokio::join!(serving, draining);
        // Both accept loops return only once the stop began.
        state.ready.store(false, Ordering::Release);
        finish(&state, &tracker, grace).await;
        state.ledger.close().await;
        tracing::info!("stopped");
    }

    /// The health monitor (after a first probe round), the reconciler,
    /// housekeeping and, with config sources, the reloader.
    async fn spawn_background(&self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        let state = &self.state;
        let monitor = HealthMonitor {
            switches: state.switches.clone(),
            client: self.switch_client.clone(),
            config: state.config.clone(),
            metrics: state.metrics.clone(),
        };
        monitor.probe_all().await;
        tracker.spawn(monitor.run(shutdown.clone()));
        let reconciler = Reconciler {
            ledger: state.ledger.clone(),
            switches: state.switches.clone(),
            client: self.switch_client.clone(),
            config: state.config.clone(),
            metrics: state.metrics.clone(),
            render: RENDER,
        };
        tracker.spawn(reconciler.run(shutdown.clone()));
        tracker.spawn(housekeeping(state.clone(), shutdown.clone()));
        // Webhooks (issue 13): this replica's delivery worker.
        let deliverer = Deliverer::new(
            state.ledger.clone(),
            state.config.clone(),
            state.metrics.clone(),
        );
        tracker.spawn(deliverer.run(shutdown.clone()));
        if let Some(sources) = self.sources.clone() {
            let reloader = Reloader {
                sources,
                auth: state.auth.clone(),
                limiter: state.limiter.clone(),
                config: state.config.clone(),
                switches: state.switches.clone(),
                metrics: state.metrics.clone(),
            };
            tracker.spawn(reloader.run(shutdown.clone()));
        }
    }
}

/// Both listeners, until `shutdown`.
async fn serve(
    https: TcpListener,
    ops: TcpListener,
    acceptor: TlsAcceptor,
    state: &Arc<AppState>,
    trends: Arc<Trends>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let config = state.config.load_full();
    let cfg = &config.server;
    let limits = ConnLimits {
        header_read_timeout: cfg.header_read_timeout(),
        header_bytes_max: cfg.header_bytes_max,
        idle_timeout: cfg.keepalive_idle_timeout(),
        h2_streams_max: cfg.h2_streams_max,
        linger: Linger {
            bytes_max: cfg.linger_bytes_max,
            timeout: cfg.linger_timeout(),
        },
    };
    tokio::join!(
        edge::serve_tls(
            https,
            acceptor,
            cfg.tls_handshake_timeout(),
            (cfg.client_address == ClientAddress::ProxyProtocol)
                .then(|| Arc::new(cfg.trusted_proxies.clone())),
            cfg.connections_max,
            limits.clone(),
            Api(state.clone()),
            state.metrics.clone(),
            shutdown.clone(),
            tracker.clone(),
        ),
        edge::serve_plain(
            ops,
            OPS_CONNECTIONS_MAX,
            limits,
            Ops {
                state: state.clone(),
                trends,
            },
            state.metrics.clone(),
            shutdown.clone(),
            tracker.clone(),
        ),
    );
}

/// The drain: `/readyz` answers 503 (`"draining": true`) while both
/// listeners still accept and serve, for `drain_for`, so a load balancer
/// takes the replica out before its listener closes. A second SIGTERM or
/// SIGINT ends it early.
async fn drain_first(state: &AppState, drain_for: Duration) {
    state.draining.store(true, Ordering::Release);
    if drain_for.is_zero() {
        return;
    }
    tracing::info!(
        drain_ms = drain_for.as_millis() as u64,
        "draining: /readyz answers 503, still serving; a second signal stops at once"
    );
    tokio::select! {
        _ = tokio::time::sleep(drain_for) => {}
        _ = shutdown_signal() => tracing::info!("second signal: the drain ends now"),
    }
}

/// Waits, within the grace period, for connections and transactions to finish.
async fn finish(state: &AppState, tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        in_flight = tracker.len(),
        "stopping: listeners closed, in-flight requests finish"
    );
    let transactions = state.transactions.tasks();
    transactions.close();
    let drained = async {
        tracker.wait().await;
        transactions.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            transactions = transactions.len(),
            "grace period over; the reconciler finishes what is left"
        );
    }
}

/// Prunes the keyed rate limiters and refreshes the gauges of bounded
/// structures, every `limits.prune_interval_ms`, until `shutdown`.
async fn housekeeping(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let interval = Duration::from_millis(state.config.load().limits.prune_interval_ms);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        state.limiter.prune();
        report_sizes(&state);
    }
}

/// Sizes of the bounded structures, as gauges.
fn report_sizes(state: &AppState) {
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

/// A token cancelled on SIGTERM or SIGINT.
pub(crate) fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
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
