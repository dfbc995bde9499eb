//! The one entry point of a new transaction: [`Transactions::submit`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Outcome;
use super::flow::Forwarder;
use crate::config::ForwardingConfig;
use crate::domain::{ClientId, TransactionId, TransactionRequest};
use crate::ledger::{Ledger, Render, Reserved};
use crate::metrics::Metrics;
use crate::switches::{SwitchClient, Switches};

/// Submits transactions and owns the tasks that carry them.
pub struct Transactions {
    ledger: Ledger,
    switches: Arc<Switches>,
    client: SwitchClient,
    metrics: Metrics,
    render: Render,
    /// Transactions being forwarded. They finish even when their client
    /// hangs up, and shutdown waits for them.
    tasks: TaskTracker,
}

/// One request to move money, as the edge parsed and authorized it.
pub struct Submission<'a> {
    pub client: ClientId,
    pub request: TransactionRequest,
    pub request_id: &'a str,
    /// The answer is due by then: a transaction still running is `Pending`.
    pub deadline: Instant,
    /// From the config the request loaded (`attempts_max`, `attempt_timeout_ms`).
    pub forwarding: &'a ForwardingConfig,
}

impl Transactions {
    pub fn new(
        ledger: Ledger,
        switches: Arc<Switches>,
        client: SwitchClient,
        metrics: Metrics,
        render: Render,
    ) -> Self {
        Self {
            ledger,
            switches,
            client,
            metrics,
            render,
            tasks: TaskTracker::new(),
        }
    }

    /// Submits a transaction and waits for its outcome until the deadline.
    ///
    /// `admit` is the caller's load shedding, asked only once a switch is
    /// available: a slot held until the transaction's flow ends, or `None`
    /// to refuse it (`Overloaded`; nothing waits).
    pub async fn submit<P: Send + 'static>(
        &self,
        submission: Submission<'_>,
        admit: impl FnOnce() -> Option<P>,
    ) -> Outcome {
        // Fail closed: with no healthy switch, reserve nothing. A known id
        // still gets its idempotent answer, so a client never retries a done
        // transaction under a new id.
        if !self.switches.any_available() {
            return self.without_switch(&submission).await;
        }
        // Shed load rather than queue: the slot travels with the transaction.
        let Some(slot) = admit() else {
            return Outcome::Overloaded;
        };
        let id = submission.request.id.clone();
        let deadline = submission.deadline;
        // Set once the reservation is stored: a deadline before that is the
        // ledger's, never a `Pending` whose record may not exist.
        let reserved = Arc::new(AtomicBool::new(false));
        // Reserve and forward on a task of their own: neither a client hanging
        // up nor the deadline may cancel a ledger write midway or strand money.
        let work = self.reserve_and_forward(submission, slot, reserved.clone());
        let task = self.tasks.spawn(work.instrument(tracing::Span::current()));
        wait(task, deadline, &reserved, id).await
    }

    /// The tasks of the transactions being forwarded, for shutdown to drain.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// No switch in rotation: the stored answer of a known id, else `NoSwitch`.
    async fn without_switch(&self, s: &Submission<'_>) -> Outcome {
        match self.ledger.transaction(&s.client, &s.request.id).await {
            Ok(Some(record)) => Outcome::existing(&s.client, &s.request, record),
            Ok(None) => Outcome::NoSwitch,
            Err(e) => Outcome::Ledger(e),
        }
    }

    /// The transaction's task: the reservation with its first attempt, then
    /// the forwarding flow.
    fn reserve_and_forward<P: Send + 'static>(
        &self,
        s: Submission<'_>,
        slot: P,
        reserved: Arc<AtomicBool>,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let forwarder = self.forwarder(s.forwarding);
        let (client, request, deadline) = (s.client, s.request, s.deadline);
        let request_id = s.request_id.to_owned();
        async move {
            let _slot = slot;
            let started = Instant::now();
            // The first switch is picked before the reserve, so its attempt
            // is recorded in the same batch (write-ahead).
            let first = forwarder.switches.pick(|_| true);
            let reservation = forwarder
                .ledger
                .reserve_with_attempt(
                    &client,
                    &request,
                    first.as_ref().map(|s| s.name()),
                    forwarder.render,
                )
                .await;
            forwarder
                .metrics
                .ledger_duration
                .observe(started.elapsed().as_secs_f64());
            reserved.store(true, Ordering::Release);
            match reservation {
                Ok(Reserved::Fresh(record)) => {
                    let gateway_ref = &record.gateway_ref;
                    forwarder
                        .run(&client, &request, gateway_ref, first, &request_id, deadline)
                        .await
                }
                Ok(Reserved::Existing(record)) => Outcome::existing(&client, &request, record),
                Ok(Reserved::InsufficientFunds(record)) => {
                    Outcome::InsufficientFunds(Box::new(record))
                }
                Err(e) => Outcome::Ledger(e),
            }
        }
    }

    fn forwarder(&self, cfg: &ForwardingConfig) -> Forwarder {
        Forwarder {
            ledger: self.ledger.clone(),
            switches: self.switches.clone(),
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            attempts_max: cfg.attempts_max,
            attempt_timeout: cfg.attempt_timeout(),
            render: self.render,
        }
    }
}

/// The task's outcome, or what the deadline makes of it.
async fn wait(
    task: JoinHandle<Outcome>,
    deadline: Instant,
    reserved: &AtomicBool,
    id: TransactionId,
) -> Outcome {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "transaction task failed");
            Outcome::Crashed
        }
        Err(_) if !reserved.load(Ordering::Acquire) => {
            tracing::warn!("request deadline passed while waiting for the ledger to reserve");
            Outcome::ReserveTimedOut
        }
        // Still running: it finishes on its own; the client polls.
        Err(_) => Outcome::Pending(id, None),
    }
}
