//! The reconciler: finishes transactions a request could not.
//!
//! Every `reconciler.interval_ms` (and once at start-up) it claims
//! `reserved`/`pending` transactions untouched for `stale_after_ms`, under a
//! lease (`FOR UPDATE SKIP LOCKED` on Postgres), so several gateway replicas
//! can run it at once without resolving one transaction twice. For each it
//! asks the switch of the last recorded attempt:
//!
//! - no attempt recorded, or the last one recorded as not sent / not
//!   processed → nothing ran → released (`failed`);
//! - approved / declined → committed / released as declined;
//! - the protocol's 404 `not_found` → that switch never got it, and earlier
//!   switches provably did not process it either (the flow only moves on
//!   when they could not have) → released (`failed`);
//! - no answer, or any other answer (a 404 of a proxy too) → stays
//!   `pending`, with the requery count and last error.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RECONCILE_CONCURRENCY};
use crate::domain::{GatewayRef, ReleaseReason, SwitchName};
use crate::ledger::{
    AttemptOutcome, Decision, LeaseToken, Ledger, LedgerError, Render, TransactionRecord,
};
use crate::metrics::Metrics;
use crate::switches::{Answer, ForwardError, SwitchClient, Switches};
use futures_util::StreamExt;

pub struct Reconciler {
    pub ledger: Ledger,
    pub switches: Arc<Switches>,
    pub client: SwitchClient,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Metrics,
    /// The response stored with what it finishes (the edge's).
    pub render: Render,
}

/// How the reconciler left one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Committed,
    Declined,
    ReleasedNotSent,
    ReleasedNotFound,
    StillUnknown,
}

impl Resolution {
    fn label(self) -> &'static str {
        match self {
            Resolution::Committed => "committed",
            Resolution::Declined => "declined",
            Resolution::ReleasedNotSent => "released_not_sent",
            Resolution::ReleasedNotFound => "released_not_found",
            Resolution::StillUnknown => "still_unknown",
        }
    }
}

impl Reconciler {
    /// One pass: claim a batch and resolve what can be resolved.
    pub async fn pass(&self) -> Result<Vec<Resolution>, LedgerError> {
        let cfg = self.config.load().reconciler.clone();
        // The ledger's clock follows the database's; a failed measurement
        // keeps the last one (the claim below reports the outage).
        if let Err(e) = self.ledger.sync_clock().await {
            tracing::debug!(error = %e, "could not read the database clock");
        }
        // This pass's lease: its commits and releases are fenced by it.
        let token = LeaseToken::new();
        let claimed = self
            .ledger
            .claim_stale(
                cfg.stale_after_ms as i64,
                cfg.lease_ms as i64,
                cfg.batch_max,
                &token,
            )
            .await?;
        let token = &token;
        let timeout = Duration::from_millis(cfg.requery_timeout_ms);
        let resolved: Vec<Option<Resolution>> = futures_util::stream::iter(claimed)
            .map(|record| async move {
                // One row that fails must not hold up the rest of the batch:
                // log it and go on; its lease expires and it is tried again.
                match self.resolve(&record, token, timeout).await {
                    Ok(resolution) => {
                        self.metrics
                            .reconciler
                            .with_label_values(&[resolution.label()])
                            .inc();
                        tracing::info!(
                            gateway_ref = %record.gateway_ref,
                            client = %record.client,
                            transaction_id = %record.id,
                            outcome = resolution.label(),
                            requeries = record.requeries,
                            "reconciled"
                        );
                        Some(resolution)
                    }
                    Err(e) => {
                        tracing::warn!(gateway_ref = %record.gateway_ref, error = %e, "could not reconcile; will retry");
                        self.metrics.reconciler.with_label_values(&["error"]).inc();
                        None
                    }
                }
            })
            .buffer_unordered(RECONCILE_CONCURRENCY as usize)
            .collect()
            .await;
        let resolutions: Vec<Resolution> = resolved.into_iter().flatten().collect();
        if let Ok(n) = self.ledger.count_unfinished().await {
            self.metrics.pending.set(n);
        }
        Ok(resolutions)
    }

    async fn resolve(
        &self,
        record: &TransactionRecord,
        token: &LeaseToken,
        timeout: Duration,
    ) -> Result<Resolution, LedgerError> {
        let id = &record.gateway_ref;
        let switch_name = match (&record.switch, record.attempts) {
            (Some(name), n) if n > 0 => name,
            // Write-ahead: no recorded attempt means nothing was sent.
            _ => return self.release_unsent(id, token).await,
        };
        // An attempt recorded as provably unprocessed needs no question (the
        // switch may be gone for good).
        if self.last_attempt_unprocessed(id).await? {
            return self.release_unsent(id, token).await;
        }
        let table = self.switches.snapshot();
        let Some(switch) = table.entries.iter().find(|e| e.name() == switch_name) else {
            self.ledger
                .note_requery(id, &format!("switch {switch_name} is no longer configured"))
                .await?;
            return Ok(Resolution::StillUnknown);
        };
        let answer = self
            .client
            .query(&switch.switch, id, "reconciler", timeout)
            .await;
        let result = if answer.is_ok() { "answered" } else { "failed" };
        self.metrics
            .requeries
            .with_label_values(&[switch_name.as_str(), result])
            .inc();
        self.settle(id, switch_name, answer, token).await
    }

    /// Whether the last recorded attempt provably did not reach its switch.
    async fn last_attempt_unprocessed(&self, id: &GatewayRef) -> Result<bool, LedgerError> {
        let attempts = self.ledger.attempts(id).await?;
        Ok(matches!(
            attempts.last().and_then(|last| last.outcome),
            Some(AttemptOutcome::NotSent | AttemptOutcome::NotProcessed)
        ))
    }

    async fn release_unsent(
        &self,
        id: &GatewayRef,
        token: &LeaseToken,
    ) -> Result<Resolution, LedgerError> {
        let release = Decision::Release {
            reason: ReleaseReason::NoSwitchAvailable,
        };
        self.ledger
            .finish_leased(id, release, token, self.render)
            .await?;
        Ok(Resolution::ReleasedNotSent)
    }

    /// Finishes the transaction on what `switch_name` answered, or notes the
    /// requery when it decided nothing.
    async fn settle(
        &self,
        id: &GatewayRef,
        switch_name: &SwitchName,
        answer: Result<Answer, ForwardError>,
        token: &LeaseToken,
    ) -> Result<Resolution, LedgerError> {
        let released = |reason| {
            self.ledger
                .finish_leased(id, Decision::Release { reason }, token, self.render)
        };
        Ok(match answer {
            Ok(Answer::Approved { reference }) => {
                let commit = Decision::Commit {
                    switch: switch_name.clone(),
                    reference,
                };
                self.ledger
                    .finish_leased(id, commit, token, self.render)
                    .await?;
                Resolution::Committed
            }
            Ok(Answer::Declined { .. }) => {
                released(ReleaseReason::DeclinedBySwitch).await?;
                Resolution::Declined
            }
            Ok(Answer::NotFound) => {
                released(ReleaseReason::NoSwitchAvailable).await?;
                Resolution::ReleasedNotFound
            }
            Ok(Answer::NotProcessed) => {
                self.ledger
                    .note_requery(id, "switch answered not_processed to a requery")
                    .await?;
                Resolution::StillUnknown
            }
            Err(e) => {
                self.ledger.note_requery(id, &e.to_string()).await?;
                Resolution::StillUnknown
            }
        })
    }

    /// Passes until `shutdown`; the first one at once.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "reconciler pass failed; retrying next interval");
            }
            let interval = Duration::from_millis(self.config.load().reconciler.interval_ms);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
