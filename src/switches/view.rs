//! One switch as operators see it: the body of `GET /v1/switches` and the
//! rows of the status page, from one struct.

use serde::Serialize;

use super::health::HealthView;

/// A snapshot of one switch: configuration, health and counters.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchView {
    pub name: String,
    pub url: String,
    pub weight: u32,
    #[serde(flatten)]
    pub health: HealthView,
    pub in_flight: i64,
    pub approved: u64,
    pub declined: u64,
    pub failed: u64,
}
