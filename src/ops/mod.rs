//! The ops listener (plain HTTP, loopback by default): what operators and
//! their tools read. `/` the status page, `/healthz`, `/readyz`, `/metrics`
//! (Prometheus text) and `/openapi.json`.

pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::edge::api::AppState;
use crate::edge::error::{ApiError, Body, json_response};
use crate::edge::server::{ConnInfo, Handler};

/// The OpenAPI 3 document of the client API (kept in sync with [`ROUTES`]
/// by a test).
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// The ops listener: `/` (status page), `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
#[derive(Clone)]
pub struct Ops(pub Arc<AppState>);

impl Handler for Ops {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.0;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::MethodNotAllowed { allow: "GET" }.into_response();
        }
        match req.uri().path() {
            "/" => status::response(state),
            "/healthz" => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let started = state.ready.load(Ordering::Acquire);
                let ledger_ok = tokio::time::timeout(Duration::from_secs(2), state.ledger.ping())
                    .await
                    .is_ok_and(|r| r.is_ok());
                let switches_ok = state.switches.any_available();
                let ready = started && ledger_ok && switches_ok;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(
                    status,
                    &serde_json::json!({
                        "ready": ready,
                        "started": started,
                        "ledger": ledger_ok,
                        "switches": switches_ok,
                    }),
                )
            }
            "/openapi.json" => {
                let mut resp =
                    Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            "/metrics" => {
                let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => ApiError::NotFound.into_response(),
        }
    }
}
