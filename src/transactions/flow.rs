//! The one-phase-commit flow of one transaction: reserve, forward, then
//! commit, release or leave pending.
//!
//! **Invariant:** an attempt is recorded in the ledger before its request
//! leaves the gateway, so a transaction with no recorded attempt was never
//! sent, and the reconciler always knows which switch to ask.
//!
//! **Invariant:** a transaction moves to another switch only when the last
//! one provably did not process it: the connection was never made, it said
//! `503 not_processed`, or a requery answered the protocol's 404 `not_found`
//! naming it ([`Answer::NotFound`]; any other 404 is an unknown outcome).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Outcome;
use crate::domain::{ClientId, GatewayRef, Movement, ReleaseReason, TransactionRequest};
use crate::ledger::{AttemptEnd, AttemptOutcome, Decision, Ledger, Render};
use crate::metrics::Metrics;
use crate::switches::{Answer, ForwardError, ForwardResult, SwitchClient, SwitchState, Switches};

/// Pause before the first requery of an unknown outcome; doubles up to the max.
const REQUERY_BACKOFF_START: Duration = Duration::from_millis(100);
const REQUERY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Kept back from the request deadline for the final ledger write and the answer.
const DEADLINE_RESERVE: Duration = Duration::from_millis(250);

/// Sends one reserved transaction to switches and learns its outcome.
pub(super) struct Forwarder {
    pub(super) ledger: Ledger,
    pub(super) switches: Arc<Switches>,
    pub(super) client: SwitchClient,
    pub(super) metrics: Metrics,
    pub(super) attempts_max: u32,
    /// One attempt or requery on a switch, at most.
    pub(super) attempt_timeout: Duration,
    /// The response stored with the transaction once it is final (the
    /// edge's: the flow knows no HTTP).
    pub(super) render: Render,
}

/// One transaction on its way through the switches.
struct Job<'a> {
    req: &'a TransactionRequest,
    /// What switches and the ledger know it by.
    gateway_ref: &'a GatewayRef,
    request_id: &'a str,
    /// The body every switch is sent.
    payload: Bytes,
    /// No attempt or requery runs past this (the deadline less the time
    /// kept for the final write).
    budget_end: Instant,
}

/// What one step of the flow decided.
enum Step {
    Done(Outcome),
    /// Try the next switch: this one provably did not process it.
    Next(Retry),
}

/// Why a transaction moved on to another switch (`switch_retries_total{reason}`).
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// The connection was never made.
    Unreachable,
    /// A requery answered the protocol's 404 `not_found`: the switch never
    /// received it.
    NeverReceived,
    /// The switch answered `503 not_processed`.
    Refused,
}

impl Retry {
    fn label(self) -> &'static str {
        match self {
            Retry::Unreachable => "not_sent",
            Retry::NeverReceived => "not_found",
            Retry::Refused => "not_processed",
        }
    }
}

impl Forwarder {
    /// Sends a freshly reserved transaction to switches until one decides it,
    /// none is left, or the deadline nears.
    ///
    /// Once an attempt is recorded, a failing ledger write never becomes an
    /// error for the client: the answer is 202 and the reconciler, which
    /// knows which switch to ask, finishes the transaction.
    /// `first` is the switch whose attempt 1 the reservation recorded (see
    /// [`Ledger::reserve_with_attempt`]); `None` when none was available then.
    pub(super) async fn run(
        &self,
        client: &ClientId,
        req: &TransactionRequest,
        gateway_ref: &GatewayRef,
        first: Option<Arc<SwitchState>>,
        request_id: &str,
        deadline: Instant,
    ) -> Outcome {
        let job = Job {
            req,
            gateway_ref,
            request_id,
            payload: Bytes::from(switch_payload(client, req, gateway_ref).to_string()),
            budget_end: deadline.checked_sub(DEADLINE_RESERVE).unwrap_or(deadline),
        };
        let (id, budget_end) = (gateway_ref, job.budget_end);
        let mut tried: Vec<Arc<SwitchState>> = Vec::new();
        let mut first = first.map(|switch| (switch, 1));

        while (tried.len() as u32) < self.attempts_max {
            let (switch, attempt_no) = match first.take() {
                Some(recorded) => recorded,
                None => match self.next_attempt(req, id, &tried, budget_end).await {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(outcome) => return outcome,
                },
            };
            // Read the budget after the write: waiting for a pooled
            // connection must not push the attempt past the deadline.
            let remaining = budget_end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let end = AttemptEnd {
                    attempt_no,
                    outcome: AttemptOutcome::NotSent,
                    error: Some("deadline reached".into()),
                };
                self.note(id, &switch, end).await;
                break;
            }
            match self.attempt(&job, &switch, attempt_no, remaining).await {
                Step::Done(outcome) => return outcome,
                Step::Next(retry) => {
                    self.metrics
                        .retries
                        .with_label_values(&[retry.label()])
                        .inc();
                    tried.push(switch);
                }
            }
        }

        // Every switch tried said, provably, that it did not process it.
        match self
            .ledger
            .release(id, ReleaseReason::NoSwitchAvailable, self.render)
            .await
        {
            Ok(record) => Outcome::settled(Box::new(record)),
            Err(e) => self.unsettled(req, id, &format!("releasing: {e}")).await,
        }
    }

    /// Picks a switch not tried yet and records the attempt on it (a second
    /// or later attempt: one database transaction of its own). `None`: no
    /// switch left or no time left.
    async fn next_attempt(
        &self,
        req: &TransactionRequest,
        id: &GatewayRef,
        tried: &[Arc<SwitchState>],
        budget_end: Instant,
    ) -> Result<Option<(Arc<SwitchState>, u32)>, Outcome> {
        let Some(switch) = self
            .switches
            .pick(|s| !tried.iter().any(|t| t.name() == s.name()))
        else {
            return Ok(None);
        };
        if budget_end <= Instant::now() {
            return Ok(None);
        }
        match self.ledger.record_attempt(id, switch.name()).await {
            Ok(n) => Ok(Some((switch, n))),
            // Not recorded, so not sent: the reconciler will release it
            // (or it is already being reconciled).
            Err(e) => Err(self
                .unsettled(req, id, &format!("recording the attempt: {e}"))
                .await),
        }
    }

    /// One attempt on one switch, and whatever it takes to learn its outcome.
    async fn attempt(
        &self,
        job: &Job<'_>,
        switch: &Arc<SwitchState>,
        attempt_no: u32,
        remaining: Duration,
    ) -> Step {
        let result = self.send(job, switch, remaining).await;
        match self.learn(job, switch, attempt_no, result).await {
            Ok(answer) => self.decide(job, switch, attempt_no, answer).await,
            Err(step) => step,
        }
    }

    /// `POST /transactions` on `switch`, timed.
    async fn send(
        &self,
        job: &Job<'_>,
        switch: &Arc<SwitchState>,
        remaining: Duration,
    ) -> Result<Answer, ForwardError> {
        let _in_flight = switch.begin();
        let started = Instant::now();
        let result = self
            .client
            .forward(
                &switch.switch,
                job.gateway_ref,
                job.request_id,
                job.payload.clone(),
                remaining.min(self.attempt_timeout),
            )
            .await;
        let rtt = started.elapsed();
        switch.observe_latency(rtt, self.switches.balance_settings().ewma_decay);
        self.metrics
            .forward_duration
            .with_label_values(&[switch.name()])
            .observe(rtt.as_secs_f64());
        result
    }

    /// The switch's answer, requeried when the forward's outcome is unknown;
    /// or the step to take without one (next switch, or pending).
    async fn learn(
        &self,
        job: &Job<'_>,
        switch: &Arc<SwitchState>,
        attempt_no: u32,
        result: Result<Answer, ForwardError>,
    ) -> Result<Answer, Step> {
        let id = job.gateway_ref;
        let end = |outcome, error: &str| AttemptEnd {
            attempt_no,
            outcome,
            error: Some(error.to_owned()),
        };
        let reason = match result {
            Ok(answer) => return Ok(answer),
            Err(ForwardError::NotSent(reason)) => {
                tracing::warn!(switch = %switch.name(), %reason, "switch unreachable; trying another");
                self.note(id, switch, end(AttemptOutcome::NotSent, &reason))
                    .await;
                return Err(Step::Next(Retry::Unreachable));
            }
            Err(ForwardError::Unknown(reason)) => reason,
        };
        tracing::warn!(switch = %switch.name(), %reason, "outcome unknown; requerying");
        self.note(id, switch, end(AttemptOutcome::Unknown, &reason))
            .await;
        match self.requery(switch, job).await {
            // Never received: as safe as a refused connection.
            Some(Answer::NotFound) => Err(Step::Next(Retry::NeverReceived)),
            Some(answer) => Ok(answer),
            None => Err(self.pending(job, &reason).await.into()),
        }
    }

    /// Still unknown at the end of the budget: `pending`, for the reconciler.
    async fn pending(&self, job: &Job<'_>, reason: &str) -> Outcome {
        let id = job.req.id.clone();
        match self.ledger.mark_pending(job.gateway_ref, reason).await {
            Ok(record) => Outcome::Pending(id, Some(Box::new(record))),
            Err(e) => {
                tracing::warn!(error = %e, "could not mark pending; the reconciler will");
                Outcome::Pending(id, None)
            }
        }
    }

    /// Commits or releases on the switch's answer, with the attempt's outcome
    /// in the same batched write; or moves on when it did not process it.
    async fn decide(
        &self,
        job: &Job<'_>,
        switch: &Arc<SwitchState>,
        attempt_no: u32,
        answer: Answer,
    ) -> Step {
        let id = job.gateway_ref;
        let end = |outcome, error: Option<String>| AttemptEnd {
            attempt_no,
            outcome,
            error,
        };
        let (decision, end) = match answer {
            Answer::Approved { reference } => (
                Decision::Commit {
                    switch: switch.name().clone(),
                    reference,
                },
                end(AttemptOutcome::Approved, None),
            ),
            Answer::Declined { reason } => (
                Decision::Release {
                    reason: ReleaseReason::DeclinedBySwitch,
                },
                end(AttemptOutcome::Declined, Some(reason)),
            ),
            Answer::NotProcessed | Answer::NotFound => {
                self.note(id, switch, end(AttemptOutcome::NotProcessed, None))
                    .await;
                return Step::Next(Retry::Refused);
            }
        };
        self.observe(switch, end.outcome);
        match self
            .ledger
            .finish(id, decision, Some(end), self.render)
            .await
        {
            Ok(record) => Outcome::settled(Box::new(record)).into(),
            Err(e) => self
                .unsettled(job.req, id, &format!("finishing: {e}"))
                .await
                .into(),
        }
    }

    /// The ledger could not record the end of the flow: 202, and the
    /// reconciler finishes it. Logged, with the record if it can be read.
    async fn unsettled(&self, req: &TransactionRequest, id: &GatewayRef, why: &str) -> Outcome {
        tracing::error!(gateway_ref = %id, reason = why, "ledger write failed after an attempt; leaving it to the reconciler");
        let record = self
            .ledger
            .transaction_by_ref(id)
            .await
            .ok()
            .flatten()
            .map(Box::new);
        match record {
            Some(r) => Outcome::settled(r),
            None => Outcome::Pending(req.id.clone(), None),
        }
    }

    /// Asks `switch` what became of the transaction, with backoff, until it
    /// answers or the budget runs out (`None`).
    async fn requery(&self, switch: &SwitchState, job: &Job<'_>) -> Option<Answer> {
        let budget_end = job.budget_end;
        // A pause before the first question too: a switch that queues work
        // may not have recorded a POST that just timed out.
        let mut backoff = REQUERY_BACKOFF_START;
        loop {
            let pause = backoff.min(budget_end.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(REQUERY_BACKOFF_MAX);
            let remaining = budget_end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            match self
                .client
                .query(
                    &switch.switch,
                    job.gateway_ref,
                    job.request_id,
                    remaining.min(self.attempt_timeout),
                )
                .await
            {
                Ok(answer) => {
                    self.metrics
                        .requeries
                        .with_label_values(&[switch.name().as_str(), "answered"])
                        .inc();
                    return Some(answer);
                }
                Err(e) => {
                    self.metrics
                        .requeries
                        .with_label_values(&[switch.name().as_str(), "failed"])
                        .inc();
                    tracing::debug!(switch = %switch.name(), error = %e, "requery failed");
                }
            }
        }
    }

    /// Counts how an attempt ended and feeds the switch's passive health.
    fn observe(&self, switch: &SwitchState, outcome: AttemptOutcome) {
        self.metrics
            .forwards
            .with_label_values(&[switch.name().as_str(), outcome.as_str()])
            .inc();
        let result = match outcome {
            AttemptOutcome::Approved => ForwardResult::Approved,
            AttemptOutcome::Declined => ForwardResult::Declined,
            AttemptOutcome::NotSent | AttemptOutcome::NotProcessed | AttemptOutcome::Unknown => {
                ForwardResult::Failed
            }
        };
        switch.record_forward(result, self.switches.passive_failures_max());
    }

    /// Records how an attempt that decided nothing ended, in the metrics and
    /// (best effort: the reconciler does not need it) in the ledger.
    async fn note(&self, id: &GatewayRef, switch: &SwitchState, end: AttemptEnd) {
        self.observe(switch, end.outcome);
        if let Err(e) = self
            .ledger
            .finish_attempt(id, end.attempt_no, end.outcome, end.error.as_deref())
            .await
        {
            tracing::warn!(error = %e, attempt_no = end.attempt_no, "could not record the attempt's outcome");
        }
    }
}

impl From<Outcome> for Step {
    fn from(outcome: Outcome) -> Self {
        Step::Done(outcome)
    }
}

/// The body sent to a switch: the gateway's reference (also the
/// `Idempotency-Key`), then the transaction as the client described it, with
/// who sent it.
fn switch_payload(
    client: &ClientId,
    req: &TransactionRequest,
    gateway_ref: &GatewayRef,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "gatewayRef": gateway_ref,
        "clientId": client,
        "transactionId": req.id,
        "type": req.movement.kind().as_str(),
        "amount": req.amount,
        "currency": req.currency,
    });
    match &req.movement {
        Movement::Debit { account } | Movement::Credit { account } => {
            body["accountId"] = serde_json::json!(account);
        }
        Movement::Transfer { from, to } => {
            body["from"] = serde_json::json!(from);
            body["to"] = serde_json::json!(to);
        }
    }
    if let Some(m) = &req.metadata {
        body["metadata"] = m.clone();
    }
    body
}
