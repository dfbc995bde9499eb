//! Switchboard: a load-balancing transaction gateway.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the codemap.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod devtools;
pub mod domain;
pub mod edge;
pub mod ledger;
pub mod metrics;
mod ops;
pub mod switches;
pub mod transactions;
pub mod webhooks;
