//! The one integration-test binary: real TLS, real Postgres, real simulated switches.

mod db;
mod ledger;
mod sim;
