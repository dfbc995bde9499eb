//! The HTTPS handler: per request, request id → deadline → per-IP limit →
//! route (404/405) → authentication → mTLS subject binding → role →
//! per-client limit → the shared limits (Redis, when configured) → the
//! endpoint's handler. Every refusal is audited in
//! [`deny`], inside the request's span, which names the client's address
//! ([`client_ip`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{ClientAddress, ServerConfig};
use crate::domain::Role;
use crate::edge::auth::Principal;
use crate::edge::client_addr::forwarded_for;
use crate::edge::error::{ApiError, Body, Unauthenticated};
use crate::edge::handlers;
use crate::edge::routes::{Endpoint, find_route, route_label};
use crate::edge::server::{ConnInfo, Handler};
use crate::edge::shared_limits::SharedRefusal;
use crate::edge::state::AppState;
use crate::edge::webhooks;

/// Counts a request in flight until dropped, even if hyper drops the
/// request's future because the client went away.
struct InFlightGuard(prometheus::IntGauge);

impl InFlightGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The HTTPS handler.
#[derive(Clone)]
pub struct Api(pub Arc<AppState>);

/// How long past its deadline a request may run before the backstop answers 504.
const DEADLINE_BACKSTOP: Duration = Duration::from_secs(1);

/// Longest accepted incoming `X-Request-Id`.
const REQUEST_ID_LEN_MAX: usize = 128;

impl Handler for Api {
    async fn call(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.0;
        let started = Instant::now();
        let request_id = request_id(&req);
        let route = route_label(req.uri().path());
        let (deadline, client) = {
            let config = state.config.load();
            let server = &config.server;
            (
                started + server.request_deadline(),
                client_ip(server, &req, &conn),
            )
        };
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            route,
            client_ip = %client
        );
        let in_flight = InFlightGuard::new(&state.metrics.http_in_flight);
        let work = route_request(state, req, &conn, client, &request_id, deadline);
        // Handlers answer by `deadline` themselves (a transaction answers
        // 202); this backstop only catches one that does not.
        let backstop = deadline + DEADLINE_BACKSTOP;
        let mut resp = match tokio::time::timeout_at(backstop, work)
            .instrument(span.clone())
            .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => e.into_response(),
            Err(_) => ApiError::DeadlineExceeded.into_response(),
        };
        drop(in_flight);
        let status = resp.status();
        state
            .metrics
            .http_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        span.in_scope(|| {
            tracing::info!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "answered"
            );
        });
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }
}

/// The client's address, which the per-IP limit keys on and the logs show:
/// with `server.client_address = "x_forwarded_for"` and a trusted proxy as
/// the TCP peer, the rightmost `X-Forwarded-For` address that is not a
/// trusted proxy (the peer when the header is missing or malformed);
/// otherwise what the connection says (the PROXY header's source, or the
/// peer).
pub(crate) fn client_ip<B>(server: &ServerConfig, req: &Request<B>, conn: &ConnInfo) -> IpAddr {
    match server.client_address {
        ClientAddress::XForwardedFor if server.trusted_proxies.contains(conn.peer.ip()) => {
            forwarded_for(req.headers(), &server.trusted_proxies).unwrap_or(conn.client)
        }
        _ => conn.client,
    }
}

/// The incoming `X-Request-Id` if it is sane, else a new one.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_LEN_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn route_request(
    state: &AppState,
    req: Request<Incoming>,
    conn: &ConnInfo,
    client: IpAddr,
    request_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    // Before any signature is checked: a flood of garbage tokens from one
    // address costs a hash-map lookup each.
    state.limiter.check_ip(client).map_err(|r| {
        deny(state, None, "rate_limited_ip");
        ApiError::from(r)
    })?;
    check_host(&req)?;
    let path = req.uri().path().to_owned();
    let (route, id) = find_route(req.method(), &path)?;
    let who = authorize(state, &req, conn, route.roles)?;
    state
        .limiter
        .check_client(&who.client, &who.roles)
        .map_err(|r| {
            deny(state, Some(&who), "rate_limited_client");
            ApiError::from(r)
        })?;
    // Both local cuts passed: with `limits.redis.url` the shared buckets
    // decide (one round trip). Unauthenticated requests never get here, so
    // a garbage-token flood costs Redis nothing.
    if state.limiter.is_shared() {
        let config = state.config.load_full();
        state
            .limiter
            .check_shared(&config.limits.redis, client, &who.client, &who.roles)
            .await
            .map_err(|refusal| match refusal {
                SharedRefusal::Limited(r) => {
                    let reason = match r.scope {
                        "ip" => "rate_limited_ip",
                        _ => "rate_limited_client",
                    };
                    deny(state, Some(&who), reason);
                    ApiError::from(r)
                }
                SharedRefusal::Unavailable => ApiError::RateLimitUnavailable,
            })?;
    }
    match route.endpoint {
        Endpoint::PostTransaction => {
            handlers::post_transaction(state, who, req, request_id, deadline).await
        }
        Endpoint::ListTransactions => {
            handlers::list_transactions(state, &who, req.uri().query()).await
        }
        Endpoint::GetTransaction => {
            handlers::get_transaction(state, &who, id, req.uri().query()).await
        }
        Endpoint::PostAccount => handlers::post_account(state, req, deadline).await,
        Endpoint::GetAccount => handlers::get_account(state, &who, id).await,
        Endpoint::PatchAccount => handlers::patch_account(state, req, id, deadline).await,
        Endpoint::GetPostings => handlers::get_postings(state, &who, id, req.uri().query()).await,
        Endpoint::GetSwitches => Ok(handlers::get_switches(state)),
        // ---- webhooks (issue 13) ----
        Endpoint::PostWebhook => webhooks::post_webhook(state, req, deadline).await,
        Endpoint::GetWebhooks => webhooks::get_webhooks(state).await,
        Endpoint::DeleteWebhook => webhooks::delete_webhook(state, id).await,
        Endpoint::GetFailedDeliveries => webhooks::get_failed(state, id).await,
        Endpoint::PostRedelivery => webhooks::post_redeliver(state, id).await,
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` (an
/// HTTP/1.0 one at most one), and its value is `host[:port]` (or empty);
/// anything else is 400. HTTP/2 names its authority in `:authority`.
pub(crate) fn check_host<B>(req: &Request<B>) -> Result<(), ApiError> {
    let required = match req.version() {
        Version::HTTP_11 => true,
        Version::HTTP_10 | Version::HTTP_09 => false,
        _ => return Ok(()),
    };
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    let problem = match (first, second) {
        (None, _) if required => "an HTTP/1.1 request needs a Host header",
        (None, _) => return Ok(()),
        (Some(_), Some(_)) => "more than one Host header",
        (Some(v), None) if v.is_empty() => return Ok(()),
        (Some(v), None) => {
            let valid = !v.as_bytes().contains(&b'@')
                && http::uri::Authority::try_from(v.as_bytes()).is_ok();
            if valid {
                return Ok(());
            }
            "the Host header is not host[:port]"
        }
    };
    Err(ApiError::InvalidRequest(format!("Host: {problem}")))
}

/// Verifies the bearer token and that it carries one of `roles`.
fn authorize<B>(
    state: &AppState,
    req: &Request<B>,
    conn: &ConnInfo,
    roles: &[Role],
) -> Result<Principal, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let who = state.auth.load().verify(header).map_err(|e| {
        deny(state, None, e.reason());
        ApiError::Unauthorized(Unauthenticated::from(&e))
    })?;
    let config = state.config.load();
    if config.auth.require_sub_match_client_cert
        && config.server.client_ca.is_some()
        && conn.client_cert_cn.as_deref() != Some(who.client.as_str())
    {
        deny(state, Some(&who), "client_cert_mismatch");
        return Err(ApiError::Unauthorized(Unauthenticated::ClientCertMismatch));
    }
    if !roles.iter().any(|r| who.has(*r)) {
        deny(state, Some(&who), "missing_role");
        return Err(ApiError::Forbidden(MISSING_ROLE));
    }
    Ok(who)
}

/// A 403's message (the OpenAPI document's example too).
pub(super) const MISSING_ROLE: &str = "the token lacks the role this route needs";

/// The audit trail of a refusal: one log line (inside the request's span,
/// so with its request id and route) and one count by reason. Never the
/// token itself.
fn deny(state: &AppState, who: Option<&Principal>, reason: &'static str) {
    state.metrics.denied.with_label_values(&[reason]).inc();
    match who {
        Some(who) => {
            tracing::warn!(target: "switchboard::audit", client = %who.client, reason, "denied")
        }
        None => tracing::warn!(target: "switchboard::audit", reason, "denied"),
    }
}
