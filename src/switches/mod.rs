//! The upstream switches: the protocol client, the live table with its
//! weighted rotation, and health (the state machine of one switch and the
//! monitor that probes them all). Only the monitor writes health; requests
//! read the table without a lock.

mod client;
mod health;
mod table;
mod view;

pub use client::{Answer, ForwardError, Switch, SwitchClient};
pub use health::{ForwardResult, HealthMonitor, HealthView};
pub use table::{InFlight, SwitchState, SwitchTable, Switches};
pub use view::SwitchView;
