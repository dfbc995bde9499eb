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
pub use view::{AttemptView, Pending, PendingView, TransactionView, transaction_json};
