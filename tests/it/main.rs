//! The one integration-test binary: real TLS, real Postgres, real simulated switches.

mod db;
mod foundation;
mod harness;
mod ledger;
mod resilience;
mod sim;
mod transactions;
