//! What a submitted transaction ended with, as its client is told.

use crate::domain::{ClientId, TransactionId, TransactionRequest, TxStatus};
use crate::ledger::{LedgerError, StoredResponse, TransactionRecord};

/// How a submission ended. Each variant is one answer; the edge maps every
/// one to its response and its count in one `match`, so a new variant does
/// not compile until it has both.
#[derive(Debug)]
pub enum Outcome {
    /// A switch approved it: committed.
    Committed(Box<TransactionRecord>),
    /// A switch declined it: released.
    Declined(Box<TransactionRecord>),
    /// The source balance was too low: stored as declined, never forwarded.
    InsufficientFunds(Box<TransactionRecord>),
    /// Reserved, then every switch tried provably did not process it:
    /// released as failed.
    Failed(Box<TransactionRecord>),
    /// Not known by the deadline; it finishes on its own. The record is
    /// absent when the ledger could not be read back.
    Pending(TransactionId, Option<Box<TransactionRecord>>),
    /// The id is stored, final, for this client and this request: its stored answer.
    Replayed(StoredResponse),
    /// The id is stored for this client and this request, still in flight.
    InProgress,
    /// The client stored this id with another request.
    Reused,
    /// No switch in rotation and the id unknown: nothing reserved.
    NoSwitch,
    /// Too many transactions in flight: nothing reserved.
    Overloaded,
    /// The ledger refused or could not make the reservation (nothing stored),
    /// or could not be read.
    Ledger(LedgerError),
    /// The deadline passed before the reservation was stored; a retry with
    /// the same id finds whatever it became.
    ReserveTimedOut,
    /// The transaction's task ended without an answer (it panicked: a bug).
    Crashed,
}

impl Outcome {
    /// A record as it stands after the flow wrote (or failed to write) its
    /// end: final as stored, else pending.
    pub(super) fn settled(record: Box<TransactionRecord>) -> Self {
        match record.status {
            TxStatus::Committed => Outcome::Committed(record),
            TxStatus::Declined => Outcome::Declined(record),
            TxStatus::Failed => Outcome::Failed(record),
            TxStatus::Reserved | TxStatus::Pending => {
                Outcome::Pending(record.id.clone(), Some(record))
            }
        }
    }

    /// An id the client already stored: a replay, still in progress, or
    /// reused.
    pub(super) fn existing(
        client: &ClientId,
        request: &TransactionRequest,
        record: TransactionRecord,
    ) -> Self {
        // The ledger finds ids per client, so the row is this client's; the
        // check stays so that no path can ever replay another client's
        // transaction.
        if record.client != *client || record.fingerprint != request.fingerprint() {
            return Outcome::Reused;
        }
        match (record.status.is_final(), record.response) {
            (true, Some(stored)) => Outcome::Replayed(stored),
            _ => Outcome::InProgress,
        }
    }
}
