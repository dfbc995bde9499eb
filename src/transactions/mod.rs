//! One transaction's life: [`Transactions::submit`] fails closed, sheds load,
//! reserves (with the first attempt) and forwards, and answers a typed
//! [`Outcome`]; the [`Reconciler`] finishes what a request could not; the
//! JSON view of a transaction.
//!
//! This part knows no HTTP: the edge maps each [`Outcome`] to a response and
//! hands in the [`Render`] of the responses stored for replays.

mod flow;
mod outcome;
mod reconciler;
mod submit;
mod view;

pub use outcome::Outcome;
pub use reconciler::{Reconciler, Resolution};
pub use submit::{Submission, Transactions};
pub use view::transaction_json;

use crate::domain::{ReleaseReason, TransactionId};
use crate::ledger::{Decision, Ledger, LedgerError, Render, TransactionRecord};

/// Gives the held money back for `reason`, with the status it implies.
async fn release(
    ledger: &Ledger,
    id: &TransactionId,
    reason: ReleaseReason,
    render: Render,
) -> Result<TransactionRecord, LedgerError> {
    ledger
        .release(id, reason.status(), reason.as_str(), render)
        .await
}

/// The ledger's decision to release for `reason`.
fn release_decision(reason: ReleaseReason) -> Decision {
    Decision::Release {
        status: reason.status(),
        reason: reason.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_stores_insufficient_funds_as_the_release_reason_reads_it() {
        assert_eq!(
            ReleaseReason::parse(crate::ledger::REASON_INSUFFICIENT_FUNDS),
            Some(ReleaseReason::InsufficientFunds)
        );
    }
}
