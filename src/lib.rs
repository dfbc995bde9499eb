//! Switchboard: a load-balancing transaction gateway.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the codemap.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod ledger;
pub mod sim;
