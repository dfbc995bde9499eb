//! The health monitor: one background task that owns switch health.
//!
//! Every `health.interval_ms` (jittered) it probes each switch with
//! `GET /health` on a fresh connection, and applies the thresholds in
//! [`SwitchState::record_probe`]. It is the only writer of health; the
//! request path reads the lock-free snapshot in [`Switches`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::switches::client::{SwitchClient, SwitchState, Switches, Thresholds};

pub struct HealthMonitor {
    pub switches: Arc<Switches>,
    pub client: SwitchClient,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Metrics,
}

impl HealthMonitor {
    /// Probes every switch once, concurrently (at most `SWITCHES_MAX`).
    pub async fn probe_all(&self) {
        let config = self.config.load();
        let h = &config.health;
        let thresholds = Thresholds {
            healthy: h.healthy_threshold,
            unhealthy: h.unhealthy_threshold,
            passive_failures: h.passive_failures_max,
        };
        let table = self.switches.snapshot();
        let probes = table
            .entries
            .iter()
            .map(|entry| self.probe_one(entry, h.timeout(), thresholds));
        futures_util::future::join_all(probes).await;
    }

    async fn probe_one(&self, entry: &Arc<SwitchState>, timeout: Duration, t: Thresholds) {
        let started = Instant::now();
        let ok = self.client.probe(&entry.switch, timeout).await;
        let was = entry.is_healthy();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let healthy = entry.record_probe(ok, started.elapsed(), now, t);
        let name = entry.name();
        self.metrics
            .probes
            .with_label_values(&[name, if ok { "ok" } else { "failed" }])
            .inc();
        self.metrics
            .switch_up
            .with_label_values(&[name])
            .set(i64::from(healthy));
        if healthy != was {
            if healthy {
                tracing::info!(switch = name, "switch is healthy: back in rotation");
            } else {
                tracing::warn!(switch = name, "switch is down: out of rotation");
            }
        }
    }

    /// Probes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let interval = self.config.load().health.interval();
            let jitter_ms = rand::random_range(0..=interval.as_millis() as u64 / 10);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval + Duration::from_millis(jitter_ms)) => {}
            }
            self.probe_all().await;
        }
    }
}
