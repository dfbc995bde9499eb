//! Webhooks (issue 13): the delivery worker and the signature.
//!
//! The outbox rows are the ledger's (written with the final state, see
//! `ledger/webhooks.rs`); this part sends them. Every replica runs one
//! [`Deliverer`]: it claims due deliveries under a fenced lease
//! (`FOR UPDATE SKIP LOCKED` on Postgres, as the reconciler claims), POSTs
//! each event signed ([`signature`]) to its webhook's registered URL with a
//! bounded timeout and answer size, and ends the attempt: delivered on a 2xx,
//! else retried with exponential backoff and full jitter until
//! `webhooks.horizon_ms` after the event or `webhooks.attempts_max`, then
//! failed (operators list and redeliver those). At least once: a crash
//! between the POST and the end leaves the lease to run out, and the event
//! is sent again, with the same event id.

mod deliverer;
mod sign;

pub use deliverer::{Deliverer, event_body};
pub use sign::{signature, verify};
