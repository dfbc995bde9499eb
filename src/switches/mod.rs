//! The upstream switches: the protocol client, the live table with its
//! balancing (weighted rotation or least latency), and health (the state
//! machine of one switch, outlier ejection, and the monitor that probes them
//! all). Only the monitor writes health; requests read the table without a
//! lock.

mod balance;
mod client;
mod health;
mod table;
mod view;

pub use client::{Answer, ForwardError, Switch, SwitchClient};
pub use health::{ForwardResult, HealthMonitor, HealthView};
pub use table::{BalanceSettings, InFlight, SwitchState, SwitchTable, Switches};
pub use view::{BalanceView, SwitchView};
