//! The one integration-test binary: real TLS, real Postgres, real simulated switches.

mod auth;
mod db;
mod foundation;
mod harness;
mod hostile;
mod ledger;
mod limits;
mod openapi;
mod props;
mod resilience;
mod sim;
mod transactions;
