//! The last minutes of each switch, for the status page: a bounded ring of
//! per-second samples (committed, p50/p99 forward latency, errors) taken from
//! the same metrics `/metrics` exports, and the inline SVG charts drawn from
//! them (no script, nothing fetched).
//!
//! [`Trends::sample`] runs once a second ([`run`]); each sample is the
//! difference of the switch's counters and latency histogram since the one
//! before, so a chart's values add up to the counter's growth over its
//! window.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Metric;
use tokio_util::sync::CancellationToken;

use crate::edge::AppState;

/// Forward results that count as errors on the charts.
const ERROR_RESULTS: [&str; 3] = ["not_sent", "not_processed", "unknown"];

/// One second of one switch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    pub(super) committed: u64,
    pub(super) errors: u64,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
}

/// A switch's counters as last read.
#[derive(Debug, Clone, Default)]
struct Reading {
    approved: u64,
    errors: u64,
    /// Cumulative count per latency bucket, upper bounds in seconds.
    buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Reading>,
}

/// Every switch's ring, at most `capacity` samples each.
#[derive(Debug)]
pub(crate) struct Trends {
    capacity: usize,
    rings: Mutex<BTreeMap<String, Ring>>,
}

impl Trends {
    /// Rings of `window` worth of per-second samples.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            capacity: window.as_secs().max(1) as usize,
            rings: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes one sample of every configured switch; forgets removed ones.
    pub(crate) fn sample(&self, state: &AppState) {
        let m = &state.metrics;
        let names: Vec<String> = state
            .switches
            .snapshot()
            .entries
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings.retain(|name, _| names.contains(name));
        for name in names {
            let now = Reading {
                approved: m
                    .forwards
                    .with_label_values(&[name.as_str(), "approved"])
                    .get(),
                errors: ERROR_RESULTS
                    .iter()
                    .map(|r| m.forwards.with_label_values(&[name.as_str(), r]).get())
                    .sum(),
                buckets: buckets(&m.forward_duration.with_label_values(&[name.as_str()])),
            };
            let ring = rings.entry(name).or_default();
            if let Some(last) = &ring.last {
                if ring.samples.len() == self.capacity {
                    ring.samples.pop_front();
                }
                ring.samples.push_back(difference(last, &now));
            }
            ring.last = Some(now);
        }
    }

    /// A copy of one switch's samples, oldest first.
    pub(super) fn samples(&self, switch: &str) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings
            .get(switch)
            .map(|r| r.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Samples once a second until `shutdown`.
pub(crate) async fn run(trends: Arc<Trends>, state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => trends.sample(&state),
        }
    }
}

fn buckets(h: &prometheus::Histogram) -> Vec<(f64, u64)> {
    h.metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

fn difference(before: &Reading, now: &Reading) -> Sample {
    let buckets: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &(bound, n))| {
            let was = before.buckets.get(i).map_or(0, |b| b.1);
            (bound, n.saturating_sub(was))
        })
        .collect();
    Sample {
        committed: now.approved.saturating_sub(before.approved),
        errors: now.errors.saturating_sub(before.errors),
        p50_ms: quantile(&buckets, 0.5).map(|s| s * 1000.0),
        p99_ms: quantile(&buckets, 0.99).map(|s| s * 1000.0),
    }
}

/// The `q` quantile of cumulative bucket counts, interpolated linearly
/// inside its bucket (as Prometheus' `histogram_quantile`); `None` without
/// observations. Beyond the last bound: the last bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, n) in buckets {
        if n as f64 >= rank {
            let inside = (n - below) as f64;
            let frac = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * frac);
        }
        (lower, below) = (bound, n);
    }
    Some(lower)
}

/// Chart geometry, px.
const W: usize = 240;
const H: usize = 48;

/// One switch's three charts: committed per second, p50/p99 latency, errors
/// per second, each bar or point carrying its value in `data-v`.
pub(super) fn charts(out: &mut String, switch: &str, samples: &[Sample], capacity: usize) {
    let name = super::status::escape(switch);
    let committed: Vec<f64> = samples.iter().map(|s| s.committed as f64).collect();
    let errors: Vec<f64> = samples.iter().map(|s| s.errors as f64).collect();
    let _ = write!(
        out,
        "<div class=\"trend\" data-trend=\"{name}\"><h3>{name}</h3>"
    );
    bars(
        out,
        "committed",
        "committed tx/s",
        &committed,
        capacity,
        "#2e7d32",
    );
    latency(out, samples, capacity);
    bars(out, "errors", "errors/s", &errors, capacity, "#c62828");
    out.push_str("</div>");
}

fn bars(out: &mut String, chart: &str, title: &str, values: &[f64], capacity: usize, color: &str) {
    let max = values.iter().copied().fold(0.0, f64::max);
    let total: f64 = values.iter().sum();
    let last = values.last().copied().unwrap_or(0.0);
    let _ = write!(
        out,
        "<figure><figcaption>{title}: last {last:.0}, max {max:.0}, \
         <span data-total=\"{chart}\">{total:.0}</span> in {secs} s</figcaption>\
         <svg data-chart=\"{chart}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"{title}\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>",
        secs = values.len(),
    );
    let step = W as f64 / capacity.max(1) as f64;
    let offset = capacity.saturating_sub(values.len());
    for (i, v) in values.iter().enumerate() {
        let h = if max > 0.0 { v / max * H as f64 } else { 0.0 };
        let _ = write!(
            out,
            "<rect data-v=\"{v:.0}\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" fill=\"{color}\"/>",
            x = (offset + i) as f64 * step,
            y = H as f64 - h,
            w = step.max(1.0),
        );
    }
    out.push_str("</svg></figure>");
}

fn latency(out: &mut String, samples: &[Sample], capacity: usize) {
    let p50: Vec<Option<f64>> = samples.iter().map(|s| s.p50_ms).collect();
    let p99: Vec<Option<f64>> = samples.iter().map(|s| s.p99_ms).collect();
    let max = p99.iter().flatten().copied().fold(0.0, f64::max);
    let last = |v: &[Option<f64>]| {
        v.iter()
            .rev()
            .flatten()
            .next()
            .map_or("-".to_owned(), |x| format!("{x:.1} ms"))
    };
    let _ = write!(
        out,
        "<figure><figcaption>latency: p50 {}, p99 {}, max p99 {max:.1} ms</figcaption>\
         <svg data-chart=\"latency\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" aria-label=\"latency p50 and p99\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>",
        last(&p50),
        last(&p99),
    );
    let step = W as f64 / capacity.max(1) as f64;
    let offset = capacity.saturating_sub(samples.len());
    for (series, values, color) in [("p50", &p50, "#1565c0"), ("p99", &p99, "#ef6c00")] {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let v = (*v)?;
                let y = if max > 0.0 {
                    H as f64 - v / max * H as f64
                } else {
                    H as f64
                };
                Some(format!(
                    "{:.2},{y:.2}",
                    (offset + i) as f64 * step + step / 2.0
                ))
            })
            .collect();
        let _ = write!(
            out,
            "<polyline data-series=\"{series}\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
            points.join(" ")
        );
    }
    out.push_str("</svg></figure>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 10 observations: 5 under 1 ms, 5 between 1 and 2 ms.
        let b = [(0.001, 5), (0.002, 10), (0.005, 10)];
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - 0.00198).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.001, 0)], 0.5), None);
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings() {
        let before = Reading {
            approved: 10,
            errors: 1,
            buckets: vec![(0.001, 4), (0.01, 10)],
        };
        let now = Reading {
            approved: 13,
            errors: 1,
            buckets: vec![(0.001, 4), (0.01, 13)],
        };
        let s = difference(&before, &now);
        assert_eq!((s.committed, s.errors), (3, 0));
        assert!(s.p50_ms.unwrap() > 1.0 && s.p50_ms.unwrap() < 10.0);
    }

    #[test]
    fn bars_carry_their_values() {
        let mut out = String::new();
        bars(
            &mut out,
            "committed",
            "committed",
            &[1.0, 0.0, 4.0],
            10,
            "#000",
        );
        assert_eq!(out.matches("data-v=").count(), 3);
        assert!(out.contains("data-total=\"committed\">5<"), "{out}");
    }
}
