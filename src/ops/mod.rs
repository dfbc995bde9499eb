//! The ops listener (plain HTTP, loopback by default): what operators and
//! their tools read. `/` the status page, `/healthz`, `/readyz`, `/metrics`
//! (Prometheus text) and `/openapi.json`.

mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::edge::{ApiError, AppState, Body, ConnInfo, Handler, check_host, json_response};

/// The OpenAPI 3 document of the client API (kept in sync with
/// [`ROUTES`](crate::edge::ROUTES) by a test).
const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// The ops listener: `/` (status page), `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.
#[derive(Clone)]
pub(crate) struct Ops(pub(crate) Arc<AppState>);

impl Handler for Ops {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.0;
        if let Err(e) = check_host(&req) {
            return e.into_response();
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::MethodNotAllowed { allow: "GET" }.into_response();
        }
        match req.uri().path() {
            "/" => status::response(state),
            "/healthz" => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/readyz" => readyz(state).await,
            "/openapi.json" => text(
                Bytes::from_static(OPENAPI_JSON.as_bytes()),
                "application/json",
            ),
            "/metrics" => text(
                Bytes::from(state.metrics.render()),
                "text/plain; version=0.0.4",
            ),
            _ => ApiError::NotFound.into_response(),
        }
    }
}

/// 200 when start-up finished, no stop has begun, the ledger answers and a
/// switch is in rotation; else 503. The body says which part failed.
async fn readyz(state: &AppState) -> Response<Body> {
    let started = state.ready.load(Ordering::Acquire);
    let draining = state.draining.load(Ordering::Acquire);
    let ledger_ok = tokio::time::timeout(Duration::from_secs(2), state.ledger.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let switches_ok = state.switches.any_available();
    let ready = started && !draining && ledger_ok && switches_ok;
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
            "draining": draining,
            "ledger": ledger_ok,
            "switches": switches_ok,
        }),
    )
}

/// A 200 of `body` as `content_type`.
fn text(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
