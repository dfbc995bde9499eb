//! The workers: each takes the next request number until the run's
//! requests or time are used up, sends it, and checks the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::http::{HttpsClient, post};
use crate::report::Tally;

/// What every worker needs to know about the run.
pub(crate) struct Plan {
    pub(crate) client: HttpsClient,
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) run_id: String,
    /// Request `i` debits `accounts[i % len]`.
    pub(crate) accounts: Vec<String>,
    pub(crate) requests: usize,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    /// Send invalid tokens: 401 and 429 are then expected.
    pub(crate) garbage: bool,
    /// No request starts after this.
    pub(crate) deadline: Instant,
}

/// Runs `concurrency` workers to the end of the plan; their tallies merged,
/// and the wall time.
pub(crate) async fn run(plan: Arc<Plan>, concurrency: usize) -> anyhow::Result<(Tally, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(worker(plan.clone(), next.clone(), started));
    }
    let mut all = Tally::default();
    while let Some(t) = workers.join_next().await {
        all.merge(t?);
    }
    Ok((all, started.elapsed()))
}

async fn worker(plan: Arc<Plan>, next: Arc<AtomicUsize>, started: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.requests || Instant::now() >= plan.deadline {
            break;
        }
        let t0 = Instant::now();
        let outcome = one(&plan, i).await;
        let latency_us = t0.elapsed().as_micros() as u64;
        let offset_ms = t0.duration_since(started).as_millis() as u64;
        tally.record(offset_ms, latency_us, outcome);
    }
    tally
}

/// Request `i`: its answer's label, or why it is not one the API may give.
async fn one(plan: &Plan, i: usize) -> Result<String, String> {
    let id = format!("{}-tx-{i}", plan.run_id);
    let body = serde_json::json!({
        "transactionId": id, "type": "debit",
        "accountId": plan.accounts[i % plan.accounts.len()],
        "amount": plan.amount, "currency": plan.currency,
    });
    let token = if plan.garbage {
        format!("garbage.{i}.token")
    } else {
        plan.token.clone()
    };
    match post(&plan.client, &plan.url, "/v1/transactions", &token, &body).await {
        Ok((status, text, json)) => check(status, &text, json.as_ref(), &id, plan.garbage),
        Err(e) => Err(format!("transport: {e}")),
    }
}

/// Labels an answer, or says why it is not one the API may give.
fn check(
    status: StatusCode,
    text: &str,
    json: Option<&serde_json::Value>,
    id: &str,
    garbage: bool,
) -> Result<String, String> {
    let Some(json) = json else {
        return Err(format!("{status}: not JSON: {text}"));
    };
    match status.as_u16() {
        201 | 202 if json["transactionId"] == id => Ok(format!(
            "{} {}",
            status.as_u16(),
            json["status"].as_str().unwrap_or("?")
        )),
        401 if !garbage => Err(format!("{status}: {text}")),
        401 | 409 | 422 | 429 | 503 => match json["error"]["code"].as_str() {
            Some(code) => Ok(format!("{} {code}", status.as_u16())),
            None => Err(format!("{status}: no error code: {text}")),
        },
        _ => Err(format!("{status}: {text}")),
    }
}
