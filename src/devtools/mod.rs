//! Development tools, **not part of the gateway**: the simulated switch
//! (`switchboard sim`, and the switches of the tests and the demo), the
//! demo (`switchboard demo`), development certificates (`switchboard
//! certs`), and, in `load/`, the `switchboard-load` binary (its own crate
//! root, declared in `Cargo.toml`, not a module of this library).
//!
//! Only the command line uses them (`tests/it/imports.rs` checks it); the
//! gateway's own parts never do.

pub mod certs;
pub(crate) mod demo;
pub mod sim;
