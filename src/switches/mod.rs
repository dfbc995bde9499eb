pub mod client;
pub mod health;
