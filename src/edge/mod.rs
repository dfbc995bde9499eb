pub mod answer;
pub mod api;
pub mod auth;
pub mod error;
pub mod limits;
pub mod server;
pub mod tls;
