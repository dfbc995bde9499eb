//! The one integration-test binary: real TLS, real Postgres, real simulated switches.

mod auth;
mod balancing;
mod batch;
mod cli;
mod compose;
mod db;
mod failover;
mod foundation;
mod harness;
mod hostile;
mod imports;
mod kubernetes;
mod ledger;
mod lifecycle;
mod limits;
mod openapi;
mod ops_docs;
mod pg_restart;
mod props;
mod proxy;
mod readme;
mod resilience;
mod sim;
mod status_page;
mod test_sh;
mod transactions;
