pub mod certs;
pub mod demo;
pub mod sim;
