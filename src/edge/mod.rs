//! The gateway's edge: the listeners (TLS, connection limits, HTTP/1 and
//! HTTP/2), the route table, authentication and limits, body parsing, the
//! handlers, and the one place an error or a transaction's outcome becomes
//! an HTTP response (`error.rs`, `answer.rs`).
//!
//! Everything here is private to the edge but what this file re-exports.

mod answer;
mod api;
mod auth;
mod body;
mod client_addr;
mod error;
mod handlers;
mod history;
mod limits;
mod openapi;
mod query;
mod routes;
mod server;
mod shared_limits;
mod state;
pub mod tls;
mod webhooks;

pub use answer::RENDER;
pub use auth::{AuthError, Authenticator, Principal};
pub use body::{BodyFields, TransactionBody, parse_json};
pub use error::{ApiError, Body, ErrorBody, ErrorCode, ErrorDetail, Unauthenticated};
pub use openapi::{document as openapi_document, document_json as openapi_json};
pub use routes::{Endpoint, ROUTES, Route};
pub use state::AppState;

pub(crate) use api::{Api, check_host};
pub(crate) use error::json_response;
pub(crate) use limits::Limiter;
pub(crate) use server::{ConnInfo, ConnLimits, Handler, Linger, bind, serve_plain, serve_tls};
pub(crate) use shared_limits::SharedLimits;
