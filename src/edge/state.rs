//! The state every request shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use super::auth::Authenticator;
use super::limits::Limiter;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::switches::Switches;
use crate::transactions::Transactions;

/// Everything a request may need, shared by all connections. What tests
/// read (ledger, keys, switches, readiness) is public; the rest is the
/// crate's.
pub struct AppState {
    /// The running configuration; reloads swap it whole.
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub ledger: Ledger,
    /// Token verification; reloads swap it whole with the key set.
    pub auth: Arc<ArcSwap<Authenticator>>,
    pub(crate) metrics: Metrics,
    pub switches: Arc<Switches>,
    /// Per-IP and per-client rate limits and the in-flight transaction cap.
    pub(crate) limiter: Arc<Limiter>,
    /// Set once start-up finished; cleared when the listeners close.
    pub ready: AtomicBool,
    /// Set when a stop begins: `/readyz` answers 503 from then on, while
    /// the drain (`server.shutdown_drain_ms`) still serves.
    pub draining: AtomicBool,
    /// Submits transactions; owns their tasks.
    pub(crate) transactions: Transactions,
}
