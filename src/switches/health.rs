//! Switch health: the state machine of one switch ([`Health`]: probe
//! thresholds, passive ejection) and the monitor, the one background task
//! that probes every switch and applies the results.
//!
//! Every `health.interval_ms` (jittered) the monitor probes each switch with
//! `GET /health` on a fresh connection and applies the thresholds in
//! [`Health::record_probe`]. It is the only writer of health (nothing outside
//! this part can call it); the request path only counts failed forwards,
//! which eject a switch at once, and reads the lock-free snapshot in
//! [`Switches`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::client::SwitchClient;
use super::table::{SwitchState, Switches};
use crate::config::Config;
use crate::metrics::Metrics;

/// Probe thresholds, from `[health]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Thresholds {
    pub(super) healthy: u32,
    pub(super) unhealthy: u32,
}

/// How an attempt on a switch ended, for its counters and passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    Approved,
    Declined,
    /// Not sent, not processed, or unknown: the switch did not decide it.
    Failed,
}

/// The health of one switch.
#[derive(Debug, Default)]
pub(super) struct Health {
    healthy: AtomicBool,
    /// Set after the first probe: until then a switch is not in rotation.
    probed: AtomicBool,
    /// Set once probes first put it in rotation: coming back after that is
    /// "back in rotation", the first time is not.
    was_healthy: AtomicBool,
    /// Consecutive failed forwards (request path).
    forward_failures: AtomicU32,
    /// Set by the request path when `forward_failures` reaches the passive
    /// limit: out of rotation at once. Only a probe clears it, so a late
    /// success of an older request cannot undo an ejection.
    ejected: AtomicBool,
    probe_successes: AtomicU32,
    probe_failures: AtomicU32,
    last_probe_unix_ms: AtomicI64,
    last_probe_ok: AtomicBool,
    last_probe_latency_us: AtomicU64,
}

/// A switch's health as `GET /v1/switches` and the status page show it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub healthy: bool,
    pub probed: bool,
    /// RFC 3339; `None` before the first probe.
    pub last_probe_at: Option<String>,
    pub last_probe_ok: bool,
    pub last_probe_latency_ms: f64,
    pub consecutive_forward_failures: u32,
    pub ejected: bool,
}

impl Health {
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether probes have ever put it in rotation.
    pub(super) fn was_ever_healthy(&self) -> bool {
        self.was_healthy.load(Ordering::Acquire)
    }

    /// In rotation: healthy by probes and not passively ejected.
    pub(super) fn is_available(&self) -> bool {
        self.is_healthy() && !self.ejected.load(Ordering::Acquire)
    }

    /// Applies one probe result; returns the new health. The monitor's alone.
    pub(super) fn record_probe(
        &self,
        ok: bool,
        latency: Duration,
        now_unix_ms: i64,
        t: Thresholds,
    ) -> bool {
        self.last_probe_unix_ms
            .store(now_unix_ms, Ordering::Relaxed);
        self.last_probe_ok.store(ok, Ordering::Relaxed);
        self.last_probe_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
        let first = !self.probed.swap(true, Ordering::AcqRel);
        let was_healthy = self.is_healthy();
        let mut healthy = was_healthy;
        if self.ejected.swap(false, Ordering::AcqRel) {
            // Passively ejected: out until `healthy` probes in a row bring it back.
            healthy = false;
            self.probe_successes.store(0, Ordering::Relaxed);
            self.forward_failures.store(0, Ordering::Relaxed);
        }
        if ok {
            self.probe_failures.store(0, Ordering::Relaxed);
            let successes = self.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !healthy && (first || successes >= t.healthy) {
                healthy = true;
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let failures = self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if healthy && failures >= t.unhealthy {
                healthy = false;
            }
        }
        if healthy && !was_healthy {
            self.forward_failures.store(0, Ordering::Relaxed);
        }
        if healthy {
            self.was_healthy.store(true, Ordering::Release);
        }
        self.healthy.store(healthy, Ordering::Release);
        healthy
    }

    /// Request path: how an attempt ended. Only a decided answer resets the
    /// passive-failure count; `passive_failures_max` failures in a row eject.
    pub(super) fn record_forward(&self, result: ForwardResult, passive_failures_max: u32) {
        match result {
            ForwardResult::Approved | ForwardResult::Declined => {
                self.forward_failures.store(0, Ordering::Relaxed);
            }
            ForwardResult::Failed => {
                let failures = self.forward_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= passive_failures_max {
                    self.ejected.store(true, Ordering::Release);
                }
            }
        }
    }

    pub(super) fn view(&self) -> HealthView {
        let last_probe_ms = self.last_probe_unix_ms.load(Ordering::Relaxed);
        HealthView {
            healthy: self.is_healthy(),
            probed: self.probed.load(Ordering::Relaxed),
            last_probe_at: (last_probe_ms > 0).then(|| crate::domain::rfc3339_ms(last_probe_ms)),
            last_probe_ok: self.last_probe_ok.load(Ordering::Relaxed),
            last_probe_latency_ms: self.last_probe_latency_us.load(Ordering::Relaxed) as f64
                / 1000.0,
            consecutive_forward_failures: self.forward_failures.load(Ordering::Relaxed),
            ejected: self.ejected.load(Ordering::Relaxed),
        }
    }
}

/// The one task that probes switches and writes their health.
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
        let was = entry.health.is_healthy();
        let returning = entry.health.was_ever_healthy();
        let first = !entry.health.view().probed;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let healthy = entry.health.record_probe(ok, started.elapsed(), now, t);
        let name = entry.name();
        self.metrics
            .probes
            .with_label_values(&[name.as_str(), if ok { "ok" } else { "failed" }])
            .inc();
        self.metrics
            .switch_up
            .with_label_values(&[name])
            .set(i64::from(healthy));
        if healthy != was {
            if !healthy {
                tracing::warn!(switch = %name, "switch is down: out of rotation");
            } else if returning {
                tracing::info!(switch = %name, "switch is healthy: back in rotation");
            } else {
                tracing::info!(switch = %name, "switch is healthy: in rotation");
            }
        } else if first && !healthy {
            tracing::warn!(switch = %name, "switch is down: not in rotation yet");
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 2,
    };

    #[test]
    fn probes_need_thresholds_in_a_row() {
        let a = Health::default();
        assert!(
            a.record_probe(true, Duration::ZERO, 1, T),
            "the first probe decides"
        );
        assert!(a.record_probe(false, Duration::ZERO, 2, T));
        assert!(
            a.record_probe(true, Duration::ZERO, 3, T),
            "a failure streak was broken"
        );
        assert!(a.record_probe(false, Duration::ZERO, 4, T));
        assert!(!a.record_probe(false, Duration::ZERO, 5, T));
        assert!(!a.record_probe(true, Duration::ZERO, 6, T));
        assert!(a.record_probe(true, Duration::ZERO, 7, T));
    }

    #[test]
    fn only_a_switch_that_was_in_rotation_comes_back() {
        let a = Health::default();
        assert!(!a.was_ever_healthy());
        assert!(!a.record_probe(false, Duration::ZERO, 1, T));
        assert!(!a.was_ever_healthy(), "a failed first probe");
        assert!(!a.record_probe(true, Duration::ZERO, 2, T));
        assert!(a.record_probe(true, Duration::ZERO, 3, T));
        assert!(a.was_ever_healthy());
    }
}
