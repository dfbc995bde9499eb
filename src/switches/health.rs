//! Switch health: the state machine of one switch ([`Health`]: probe
//! thresholds, passive ejection, outlier ejection by success rate) and the
//! monitor, the one background task that probes every switch and applies the
//! results.
//!
//! Every `health.interval_ms` (jittered) the monitor probes each switch with
//! `GET /health` on a fresh connection and applies the thresholds in
//! [`Health::record_probe`]; every `health.outlier_interval_ms` it closes each
//! switch's window of attempts and ejects the switches whose failure share is
//! too high ([`HealthMonitor::close_outlier_window`]). It is the only writer
//! of health (nothing outside this part can call it); the request path only
//! counts forwards (consecutive failures eject a switch at once) and reads
//! the lock-free snapshot in [`Switches`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::balance::{self, Window};
use super::client::SwitchClient;
use super::table::{SwitchState, Switches};
use crate::config::{Config, HealthConfig};
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
#[derive(Debug)]
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
    /// Out of rotation by success rate until `outlier_until_ms` ([`balance::now_ms`]).
    outlier_ejected: AtomicBool,
    outlier_until_ms: AtomicU64,
    /// Recent ejections: each adds a base ejection time; a clean window
    /// takes one off.
    outlier_strikes: AtomicU32,
    outlier_ejections: AtomicU64,
    /// Decided share of the last window with enough volume, per mille;
    /// `u64::MAX`: none yet.
    success_permille: AtomicU64,
    /// Share of fresh attempts in the last health round, per mille.
    traffic_permille: AtomicU64,
    /// `picked` at the last health round.
    picked_before: AtomicU64,
}

/// A switch's health as `GET /v1/switches` and the status page show it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SwitchHealth)]
pub struct HealthView {
    /// In the rotation now.
    pub healthy: bool,
    /// At least one probe has finished.
    pub probed: bool,
    /// RFC 3339; null before the first probe.
    #[schema(format = DateTime, required = true)]
    pub last_probe_at: Option<String>,
    pub last_probe_ok: bool,
    #[schema(minimum = 0)]
    pub last_probe_latency_ms: f64,
    pub consecutive_forward_failures: u32,
    /// Taken out by failed forwards (passive ejection) until probes bring it
    /// back.
    pub ejected: bool,
    /// Taken out by success rate (outlier detection) until its ejection time
    /// is up; it then comes back through slow start.
    pub outlier_ejected: bool,
    /// Times ejected by success rate since start.
    pub outlier_ejections: u64,
}

impl Health {
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether probes have ever put it in rotation.
    pub(super) fn was_ever_healthy(&self) -> bool {
        self.was_healthy.load(Ordering::Acquire)
    }

    /// In rotation: healthy by probes, not passively ejected, not an outlier.
    pub(super) fn is_available(&self) -> bool {
        self.is_healthy()
            && !self.ejected.load(Ordering::Acquire)
            && !self.outlier_ejected.load(Ordering::Acquire)
    }

    pub(super) fn is_probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    /// Decided share of the last window with enough attempts, 0 to 1.
    pub(super) fn success_rate(&self) -> Option<f64> {
        match self.success_permille.load(Ordering::Relaxed) {
            u64::MAX => None,
            p => Some(p as f64 / 1000.0),
        }
    }

    /// Share of fresh attempts in the last health round, 0 to 1.
    pub(super) fn traffic_share(&self) -> f64 {
        self.traffic_permille.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Closes one outlier window, recording its success rate. Returns the
    /// failed share, percent, when the switch is to be ejected now (the
    /// caller applies the cap on ejections).
    pub(super) fn judge_window(&self, w: Window, h: &HealthConfig) -> Option<f64> {
        let failed_pct = w.failure_percent(h.outlier_min_requests)?;
        self.success_permille.store(
            ((100.0 - failed_pct) * 10.0).round() as u64,
            Ordering::Relaxed,
        );
        if failed_pct >= f64::from(h.outlier_failure_percent) {
            return (!self.outlier_ejected.load(Ordering::Relaxed)).then_some(failed_pct);
        }
        // A clean window forgives one earlier ejection.
        let _ = self
            .outlier_strikes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1));
        None
    }

    /// Ejects by success rate until `now + base x strikes` (at most max).
    pub(super) fn eject_outlier(&self, now_ms: u64, h: &HealthConfig) -> Duration {
        let strikes = self.outlier_strikes.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = h
            .outlier_base_ejection_ms
            .saturating_mul(u64::from(strikes))
            .min(h.outlier_max_ejection_ms);
        self.outlier_until_ms
            .store(now_ms.saturating_add(ms), Ordering::Relaxed);
        self.outlier_ejections.fetch_add(1, Ordering::Relaxed);
        self.outlier_ejected.store(true, Ordering::Release);
        Duration::from_millis(ms)
    }

    /// Ends an outlier ejection whose time is up; returns whether it did.
    pub(super) fn release_outlier(&self, now_ms: u64) -> bool {
        if self.outlier_ejected.load(Ordering::Acquire)
            && now_ms >= self.outlier_until_ms.load(Ordering::Relaxed)
        {
            self.outlier_ejected.store(false, Ordering::Release);
            return true;
        }
        false
    }

    pub(super) fn is_outlier(&self) -> bool {
        self.outlier_ejected.load(Ordering::Relaxed)
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
            outlier_ejected: self.outlier_ejected.load(Ordering::Relaxed),
            outlier_ejections: self.outlier_ejections.load(Ordering::Relaxed),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(false),
            was_healthy: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            forward_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            last_probe_unix_ms: AtomicI64::new(0),
            last_probe_ok: AtomicBool::new(false),
            last_probe_latency_us: AtomicU64::new(0),
            outlier_ejected: AtomicBool::new(false),
            outlier_until_ms: AtomicU64::new(0),
            outlier_strikes: AtomicU32::new(0),
            outlier_ejections: AtomicU64::new(0),
            success_permille: AtomicU64::new(u64::MAX),
            traffic_permille: AtomicU64::new(0),
            picked_before: AtomicU64::new(0),
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
        self.release_outliers();
        self.publish_round(h);
    }

    async fn probe_one(&self, entry: &Arc<SwitchState>, timeout: Duration, t: Thresholds) {
        let started = Instant::now();
        let ok = self.client.probe(&entry.switch, timeout).await;
        let was = entry.health.is_healthy();
        let was_available = entry.is_available();
        let returning = entry.health.was_ever_healthy();
        let first = !entry.health.is_probed();
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
        if !first && !was_available && entry.is_available() {
            entry.balance.start_slow_start(balance::now_ms());
        }
    }

    /// Ends the outlier ejections whose time is up; those switches come back
    /// through slow start.
    fn release_outliers(&self) {
        let now = balance::now_ms();
        for entry in &self.switches.snapshot().entries {
            if entry.health.release_outlier(now) {
                entry.balance.start_slow_start(now);
                tracing::info!(switch = %entry.name(), "outlier ejection over: back in rotation, slow start");
            }
        }
    }

    /// Closes every switch's outlier window: a switch failing at least
    /// `outlier_failure_percent` of at least `outlier_min_requests` attempts
    /// is ejected, worst first, while at most `outlier_max_ejection_percent`
    /// of the list (at least one switch) is ejected this way.
    pub fn close_outlier_window(&self) {
        let config = self.config.load();
        let h = &config.health;
        let table = self.switches.snapshot();
        let n = table.entries.len();
        let cap = (n * usize::from(h.outlier_max_ejection_percent) / 100).max(1);
        let mut ejected = table
            .entries
            .iter()
            .filter(|e| e.health.is_outlier())
            .count();
        let mut candidates: Vec<(f64, &Arc<SwitchState>)> = table
            .entries
            .iter()
            .filter_map(|e| {
                let failed_pct = e.health.judge_window(e.balance.take_window(), h);
                if let Some(rate) = e.health.success_rate() {
                    self.metrics
                        .switch_success_ratio
                        .with_label_values(&[e.name().as_str()])
                        .set(rate);
                }
                failed_pct.map(|pct| (pct, e))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let now = balance::now_ms();
        for (failed_pct, entry) in candidates {
            if ejected >= cap {
                tracing::warn!(
                    switch = %entry.name(), failed_pct, cap,
                    "switch fails too often but the outlier ejection cap is reached"
                );
                continue;
            }
            let time = entry.health.eject_outlier(now, h);
            ejected += 1;
            self.metrics
                .switch_outlier_ejections
                .with_label_values(&[entry.name().as_str()])
                .inc();
            tracing::warn!(
                switch = %entry.name(), failed_pct, ejection_ms = time.as_millis() as u64,
                "switch ejected by success rate (outlier)"
            );
        }
    }

    /// After a health round: the balancing gauges of each switch, its share
    /// of the round's fresh attempts, and the panic verdict.
    fn publish_round(&self, h: &HealthConfig) {
        let table = self.switches.snapshot();
        let settings = self.switches.balance_settings();
        let now = balance::now_ms();
        let deltas: Vec<u64> = table
            .entries
            .iter()
            .map(|e| {
                let picked = e.balance.picked();
                let before = e.health.picked_before.swap(picked, Ordering::Relaxed);
                picked.saturating_sub(before)
            })
            .collect();
        let total: u64 = deltas.iter().sum();
        for (entry, delta) in table.entries.iter().zip(&deltas) {
            let name = entry.name().as_str();
            let share = (delta * 1000).checked_div(total).unwrap_or(0);
            entry
                .health
                .traffic_permille
                .store(share, Ordering::Relaxed);
            let m = &self.metrics;
            m.switch_picks.with_label_values(&[name]).inc_by(*delta);
            m.switch_traffic_share
                .with_label_values(&[name])
                .set(share as f64 / 1000.0);
            m.switch_latency_ewma.with_label_values(&[name]).set(
                entry
                    .balance
                    .latency(now, settings.ewma_decay, settings.ewma_default)
                    .as_secs_f64(),
            );
            m.switch_score
                .with_label_values(&[name])
                .set(entry.score(&settings, now));
        }
        let up = table.entries.iter().filter(|e| e.is_available()).count();
        let n = table.entries.len();
        let panic = n > 0 && up * 100 < n * usize::from(h.panic_threshold_percent);
        self.metrics.switches_panic.set(i64::from(panic));
        if self.switches.set_panic(panic) != panic {
            if panic {
                tracing::error!(
                    up,
                    switches = n,
                    threshold_pct = h.panic_threshold_percent,
                    "PANIC: too few switches in rotation; routing only to the ones up"
                );
            } else {
                tracing::info!(up, switches = n, "panic over: enough switches in rotation");
            }
        }
    }

    /// Probes every `health.interval_ms` (jittered) and closes outlier
    /// windows every `health.outlier_interval_ms`, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let jittered = |interval: Duration| {
            let jitter_ms = rand::random_range(0..=interval.as_millis() as u64 / 10);
            tokio::time::Instant::now() + interval + Duration::from_millis(jitter_ms)
        };
        let mut next_probe = jittered(self.config.load().health.interval());
        let mut next_window =
            tokio::time::Instant::now() + self.config.load().health.outlier_interval();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_probe) => {
                    self.probe_all().await;
                    next_probe = jittered(self.config.load().health.interval());
                }
                _ = tokio::time::sleep_until(next_window) => {
                    self.close_outlier_window();
                    self.release_outliers();
                    next_window = tokio::time::Instant::now()
                        + self.config.load().health.outlier_interval();
                }
            }
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
