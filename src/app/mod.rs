//! The application: built from a validated [`Config`](crate::config::Config)
//! and bound (`build.rs`), then run until a shutdown signal (`run.rs`);
//! live reloads of the configuration (`reload.rs`) and logging
//! (`telemetry.rs`).
//!
//! Tests bind port 0 and read the addresses back.

mod build;
mod reload;
mod run;
pub(crate) mod telemetry;

pub(crate) use build::batching;
pub use build::{Application, StartError};
pub(crate) use run::cancel_on_signal;
