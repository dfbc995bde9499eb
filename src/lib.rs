//! Switchboard: a load-balancing transaction gateway.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the codemap.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod flow;
pub mod health;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod reconciler;
pub mod reload;
pub mod server;
pub mod sim;
pub mod status;
pub mod switch;
pub mod telemetry;
pub mod tls;
