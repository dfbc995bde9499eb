//! The ops listener (plain HTTP, loopback by default): what operators and
//! their tools read. `/` the status page, `/healthz`, `/readyz`, `/metrics`
//! (Prometheus text), `/openapi.json` (generated: `edge::openapi`) and
//! `/docs`, the API reference page that renders it.

mod docs;
mod status;
mod trends;

pub(crate) use trends::{Trends, run as sample_trends};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::edge::{
    ApiError, AppState, Body, ConnInfo, Handler, check_host, json_response, openapi_json,
};

/// The ops listener: `/` (status page), `/healthz`, `/readyz`, `/metrics`,
/// `/openapi.json`, `/docs`.
#[derive(Clone)]
pub(crate) struct Ops {
    pub(crate) state: Arc<AppState>,
    /// The status page's per-second samples.
    pub(crate) trends: Arc<Trends>,
}

impl Handler for Ops {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.state;
        if let Err(e) = check_host(&req) {
            return e.into_response();
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::MethodNotAllowed {
                allow: "GET".into(),
            }
            .into_response();
        }
        match req.uri().path() {
            "/" => status::response(state, &self.trends).await,
            "/healthz" => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/readyz" => readyz(state).await,
            "/openapi.json" => text(
                Bytes::from_static(openapi_json().as_bytes()),
                "application/json",
            ),
            "/metrics" => text(
                Bytes::from(state.metrics.render()),
                "text/plain; version=0.0.4",
            ),
            path if path.starts_with("/docs") => {
                docs::response(path).unwrap_or_else(|| ApiError::NotFound.into_response())
            }
            _ => ApiError::NotFound.into_response(),
        }
    }
}

/// Whether the gateway can take transactions, and each part's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) started: bool,
    /// A stop has begun (SIGTERM): serving on through the drain.
    pub(crate) draining: bool,
    pub(crate) ledger: bool,
    pub(crate) switches: bool,
}

impl Readiness {
    pub(crate) async fn check(state: &AppState) -> Self {
        Self {
            started: state.ready.load(Ordering::Acquire),
            draining: state.draining.load(Ordering::Acquire),
            ledger: tokio::time::timeout(Duration::from_secs(2), state.ledger.ping())
                .await
                .is_ok_and(|r| r.is_ok()),
            switches: state.switches.any_available(),
        }
    }

    pub(crate) fn ready(self) -> bool {
        self.started && !self.draining && self.ledger && self.switches
    }
}

/// 200 when start-up finished, no stop has begun, the ledger answers and a
/// switch is in rotation; else 503. The body says which part failed.
async fn readyz(state: &AppState) -> Response<Body> {
    let r = Readiness::check(state).await;
    let (ready, started, draining, ledger_ok, switches_ok) =
        (r.ready(), r.started, r.draining, r.ledger, r.switches);
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
