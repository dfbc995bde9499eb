//! One switch as operators see it: the body of `GET /v1/switches` and the
//! rows of the status page, from one struct.

use serde::Serialize;

use super::health::HealthView;

/// A snapshot of one switch: configuration, health and counters.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Switch)]
pub struct SwitchView {
    pub name: String,
    #[schema(format = "uri")]
    pub url: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: u32,
    #[serde(flatten)]
    pub health: HealthView,
    pub balancing: BalanceView,
    #[schema(minimum = 0)]
    pub in_flight: i64,
    pub approved: u64,
    pub declined: u64,
    pub failed: u64,
}

/// What balancing knows of one switch (see `forwarding.balancing`).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = SwitchBalancing)]
pub struct BalanceView {
    /// Peak-EWMA of its forward latency, decayed to now, ms.
    #[schema(minimum = 0)]
    pub latency_ewma_ms: f64,
    /// The `least_latency` score now: EWMA latency (s) x (outstanding + 1) /
    /// weight / slow-start share. Lower wins.
    #[schema(minimum = 0)]
    pub score: f64,
    /// Decided (approved or declined) share of the last outlier window with
    /// enough attempts, 0 to 1; `None` before one.
    #[schema(minimum = 0, maximum = 1, required = true)]
    pub success_rate: Option<f64>,
    /// Share of its full traffic it may take now (slow start), 0.1 to 1.
    #[schema(minimum = 0.1, maximum = 1)]
    pub slow_start_share: f64,
    /// Share of fresh attempts it got in the last health round, 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub traffic_share: f64,
    /// Fresh attempts sent to it since start.
    pub picked: u64,
}
