//! What balancing knows of one switch, beside its health: the peak-EWMA of
//! its forward latency, its attempts in the current outlier window, how
//! often it was picked, and its slow-start ramp.
//!
//! The request path writes only the latency estimate and the counters
//! (atomics, no lock); the health monitor reads the window, decides
//! ejections (in [`super::health`]) and starts slow start.
//!
//! Peak-EWMA (as linkerd2-proxy's and Finagle's balancers): an observation
//! above the estimate replaces it at once (peak); below it, it is blended in
//! with the weight of the time since the last one. Between observations the
//! estimate decays toward zero with time constant `ewma_decay_ms`, so a
//! switch nobody picks because it was slow is tried again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Share of traffic a switch starts slow start with.
const SLOW_START_MIN: f64 = 0.1;

/// Milliseconds on a process-wide monotonic clock (never 0).
pub(super) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Balancing state of one switch.
#[derive(Debug, Default)]
pub(super) struct Balance {
    /// Latency estimate, nanoseconds, as `f64` bits.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last written, [`now_ms`].
    ewma_at_ms: AtomicU64,
    /// Attempts in the current outlier window that the switch decided
    /// (approved or declined).
    window_decided: AtomicU64,
    /// Attempts in the current window that failed (not sent, not
    /// processed, unknown).
    window_failed: AtomicU64,
    /// Times picked for a fresh attempt, since start.
    picked: AtomicU64,
    /// When slow start began, [`now_ms`]; 0: not ramping.
    slow_start_since_ms: AtomicU64,
}

/// One window's attempts, read and reset by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) decided: u64,
    pub(super) failed: u64,
}

impl Window {
    pub(super) fn total(self) -> u64 {
        self.decided + self.failed
    }

    /// Failed share in percent; `None` below `min_requests`.
    pub(super) fn failure_percent(self, min_requests: u64) -> Option<f64> {
        let total = self.total();
        (total >= min_requests.max(1)).then(|| self.failed as f64 * 100.0 / total as f64)
    }
}

impl Balance {
    /// The latency estimate at `now_ms` (decayed since the last
    /// observation); `default` before the first one, so a switch nobody has
    /// timed yet is not taken for the fastest (its first answers may be
    /// slow ones still in flight).
    pub(super) fn latency(&self, now_ms: u64, decay: Duration, default: Duration) -> Duration {
        let at = self.ewma_at_ms.load(Ordering::Relaxed);
        if at == 0 {
            return default;
        }
        let est = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        Duration::from_nanos((est * decay_factor(now_ms.saturating_sub(at), decay)) as u64)
    }

    /// Request path: one attempt took `rtt`. Concurrent observations may
    /// lose one another's update (load, compute, store): an estimate, not
    /// a ledger.
    pub(super) fn observe(&self, rtt: Duration, now_ms: u64, decay: Duration) {
        let est = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let at = self.ewma_at_ms.load(Ordering::Relaxed);
        let w = decay_factor(now_ms.saturating_sub(at), decay);
        let rtt = rtt.as_nanos() as f64;
        let next = if rtt > est * w {
            rtt
        } else {
            est * w + rtt * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
        self.ewma_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Request path: how an attempt ended, for the outlier window.
    pub(super) fn count(&self, decided: bool) {
        let counter = if decided {
            &self.window_decided
        } else {
            &self.window_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Request path: picked for a fresh attempt.
    pub(super) fn note_picked(&self) {
        self.picked.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    /// The monitor's: the window so far, and a fresh one begins.
    pub(super) fn take_window(&self) -> Window {
        Window {
            decided: self.window_decided.swap(0, Ordering::Relaxed),
            failed: self.window_failed.swap(0, Ordering::Relaxed),
        }
    }

    /// The monitor's: the switch is back in rotation; ramp its share up.
    pub(super) fn start_slow_start(&self, now_ms: u64) {
        self.slow_start_since_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Share of its full traffic the switch may take now, in
    /// [`SLOW_START_MIN`]..=1, linear over `window`.
    pub(super) fn slow_start_factor(&self, now_ms: u64, window: Duration) -> f64 {
        let since = self.slow_start_since_ms.load(Ordering::Relaxed);
        let window_ms = window.as_millis() as u64;
        if since == 0 || window_ms == 0 {
            return 1.0;
        }
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= window_ms {
            return 1.0;
        }
        (elapsed as f64 / window_ms as f64).max(SLOW_START_MIN)
    }
}

/// `e^(-elapsed/decay)`: how much of an estimate survives `elapsed_ms`.
fn decay_factor(elapsed_ms: u64, decay: Duration) -> f64 {
    let decay_ms = decay.as_millis().max(1) as f64;
    (-(elapsed_ms as f64) / decay_ms).exp()
}

/// The least-latency score: lower is better. Latency times the attempts
/// that would be outstanding with this one, over weight and slow-start
/// share. A switch never observed scores 0 and is tried first.
pub(super) fn score(latency: Duration, in_flight: i64, weight: u32, slow_start: f64) -> f64 {
    let outstanding = (in_flight.max(0) + 1) as f64;
    latency.as_secs_f64() * outstanding / f64::from(weight.max(1)) / slow_start.max(SLOW_START_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);
    const DEFAULT: Duration = Duration::from_millis(30);

    #[test]
    fn a_slower_answer_is_taken_at_once_a_faster_one_blended_in() {
        let b = Balance::default();
        assert_eq!(b.latency(1_000, DECAY, DEFAULT), DEFAULT, "never timed");
        b.observe(Duration::from_millis(10), 1_000, DECAY);
        assert_eq!(b.latency(1_000, DECAY, DEFAULT), Duration::from_millis(10));
        b.observe(Duration::from_millis(200), 1_001, DECAY);
        let peak = b.latency(1_001, DECAY, DEFAULT);
        assert!(peak >= Duration::from_millis(199), "{peak:?}");
        // One decay constant later, a fast answer: the estimate is between.
        b.observe(Duration::from_millis(10), 11_001, DECAY);
        let est = b.latency(11_001, DECAY, DEFAULT);
        assert!(
            est > Duration::from_millis(10) && est < Duration::from_millis(200),
            "{est:?}"
        );
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let b = Balance::default();
        b.observe(Duration::from_millis(200), 1, DECAY);
        let later = b.latency(1 + 30_000, DECAY, DEFAULT);
        assert!(later < Duration::from_millis(11), "{later:?}");
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_all() {
        let b = Balance::default();
        let w = Duration::from_secs(30);
        assert_eq!(b.slow_start_factor(5, w), 1.0, "not ramping");
        b.start_slow_start(1_000);
        assert_eq!(b.slow_start_factor(1_000, w), SLOW_START_MIN);
        let half = b.slow_start_factor(16_000, w);
        assert!((half - 0.5).abs() < 1e-9, "{half}");
        assert_eq!(b.slow_start_factor(31_000, w), 1.0);
        assert_eq!(b.slow_start_factor(2_000, Duration::ZERO), 1.0, "off");
    }

    #[test]
    fn the_window_counts_failures_only_above_its_volume() {
        let b = Balance::default();
        for i in 0..10 {
            b.count(i % 5 != 0);
        }
        let w = b.take_window();
        assert_eq!(
            w,
            Window {
                decided: 8,
                failed: 2
            }
        );
        assert_eq!(w.failure_percent(20), None);
        assert_eq!(w.failure_percent(10), Some(20.0));
        assert_eq!(b.take_window().total(), 0, "taking resets");
    }

    #[test]
    fn score_grows_with_latency_and_load_and_shrinks_with_weight() {
        let ms = Duration::from_millis;
        assert!(score(ms(10), 0, 1, 1.0) < score(ms(20), 0, 1, 1.0));
        assert!(score(ms(10), 0, 1, 1.0) < score(ms(10), 3, 1, 1.0));
        assert!(score(ms(10), 0, 2, 1.0) < score(ms(10), 0, 1, 1.0));
        assert!(score(ms(10), 0, 1, 1.0) < score(ms(10), 0, 1, 0.5));
        assert_eq!(score(Duration::ZERO, 5, 1, 1.0), 0.0);
    }
}
