//! What a run found, and how it is printed.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;

use crate::http::{HttpsClient, get};

/// Latencies, samples and answer labels of (part of) a run.
#[derive(Default)]
pub(crate) struct Tally {
    latencies_us: Vec<u64>,
    /// (start offset ms, latency us, ok) of every request, for windows.
    samples: Vec<(u64, u64, bool)>,
    outcomes: BTreeMap<String, usize>,
    bad: Vec<String>,
}

/// Answers that are not one the API may give, kept to show.
const BAD_KEPT: usize = 5;

impl Tally {
    /// One request: its label, or why its answer was unexpected.
    pub(crate) fn record(
        &mut self,
        offset_ms: u64,
        latency_us: u64,
        outcome: Result<String, String>,
    ) {
        self.latencies_us.push(latency_us);
        let ok = outcome.as_ref().is_ok_and(|l| {
            l.starts_with("201") || l.starts_with("202") || l.contains("insufficient_funds")
        });
        self.samples.push((offset_ms, latency_us, ok));
        match outcome {
            Ok(label) => *self.outcomes.entry(label).or_default() += 1,
            Err(bad) => {
                *self.outcomes.entry("unexpected".into()).or_default() += 1;
                if self.bad.len() < BAD_KEPT {
                    self.bad.push(bad);
                }
            }
        }
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.samples.extend(other.samples);
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.bad.extend(other.bad);
    }

    /// Every answer was one the API may give.
    pub(crate) fn all_expected(&self) -> bool {
        !self.outcomes.contains_key("unexpected")
    }
}

/// Requests, wall time, throughput, latency percentiles, outcome counts and,
/// with `window_s`, latency per window.
pub(crate) fn summary(all: &mut Tally, elapsed: Duration, window_s: Option<u64>) {
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
    if let Some(w) = window_s.filter(|w| *w > 0) {
        windows(&all.samples, w);
    }
}

/// Latency per window of `w` seconds, by request start.
fn windows(samples: &[(u64, u64, bool)], w: u64) {
    let mut windows: BTreeMap<u64, Vec<(u64, bool)>> = BTreeMap::new();
    for (offset_ms, latency_us, ok) in samples {
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

/// Each account's balance after the run.
pub(crate) async fn balances(
    client: &HttpsClient,
    url: &str,
    operator: &str,
    accounts: &[String],
) -> anyhow::Result<()> {
    for account in accounts {
        let (status, text, json) =
            get(client, url, &format!("/v1/accounts/{account}"), operator).await?;
        let balance = json.as_ref().and_then(|j| j["balance"].as_i64());
        match balance {
            Some(b) if status == StatusCode::OK => println!("balance       {account} {b}"),
            _ => println!("balance       {account} unreadable: {status} {text}"),
        }
    }
    Ok(())
}

/// The unexpected answers kept.
pub(crate) fn unexpected(all: &Tally) {
    for bad in &all.bad {
        println!("unexpected    {bad}");
    }
}
