//! The one integration-test binary: real TLS, real Postgres, real simulated switches.

mod auth;
mod db;
mod foundation;
mod harness;
mod ledger;
mod limits;
mod resilience;
mod sim;
mod transactions;
