//! The client API (HTTPS) and the ops endpoints (plain HTTP).
//!
//! Order of the front end, per request: request id → deadline → per-IP
//! limit → route (404/405) → authentication → mTLS subject binding → role →
//! per-client limit → body parsing into domain types → handler (a
//! transaction also takes an in-flight permit).
//! Handlers return `Result<_, ApiError>`; `ApiError::into_response` is the one
//! place an error becomes HTTP.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Config;
use crate::domain::{
    AccountId, Amount, ClientId, Currency, Movement, Role, TransactionId, TransactionRequest,
};
use crate::edge::answer;
use crate::edge::auth::{Authenticator, Principal};
use crate::edge::error::{ApiError, Body, json_response};
use crate::edge::limits::Limiter;
use crate::edge::server::{ConnInfo, Handler};
use crate::ledger::{Account, AccountKind, Ledger, NewAccount};
use crate::metrics::Metrics;
use crate::switches::Switches;
use crate::transactions::{Submission, Transactions, transaction_json};

/// Everything a request may need, shared by all connections.
pub struct AppState {
    /// The running configuration; reloads swap it whole.
    pub config: Arc<ArcSwap<Config>>,
    pub ledger: Ledger,
    /// Token verification; reloads swap it whole with the key set.
    pub auth: Arc<ArcSwap<Authenticator>>,
    pub metrics: Metrics,
    pub switches: Arc<Switches>,
    /// Per-IP and per-client rate limits and the in-flight transaction cap.
    pub limiter: Arc<Limiter>,
    /// Set once start-up finished; cleared when shutdown begins.
    pub ready: AtomicBool,
    /// Submits transactions; owns their tasks.
    pub transactions: Transactions,
}

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
        let span =
            tracing::info_span!("request", request_id = %request_id, method = %req.method(), route);
        let in_flight = InFlightGuard::new(&state.metrics.http_in_flight);
        let deadline = started + state.config.load().server.request_deadline();
        let work = route_request(state, req, &conn, &request_id, deadline);
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

/// One route of the client API and the roles that may call it.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// The path template; `{id}` matches one segment.
    pub path: &'static str,
    /// A token needs one of these.
    pub roles: &'static [Role],
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    PostTransaction,
    GetTransaction,
    PostAccount,
    GetAccount,
    GetSwitches,
}

/// **The** table of who may call what. Routing, authorization, the OpenAPI
/// document's sync test and the role tests all read it.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/v1/transactions",
        roles: &[Role::Transact],
        endpoint: Endpoint::PostTransaction,
    },
    Route {
        method: Method::GET,
        path: "/v1/transactions/{id}",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::GetTransaction,
    },
    Route {
        method: Method::POST,
        path: "/v1/accounts",
        roles: &[Role::Operator],
        endpoint: Endpoint::PostAccount,
    },
    Route {
        method: Method::GET,
        path: "/v1/accounts/{id}",
        roles: &[Role::Transact, Role::Auditor],
        endpoint: Endpoint::GetAccount,
    },
    Route {
        method: Method::GET,
        path: "/v1/switches",
        roles: &[Role::Operator],
        endpoint: Endpoint::GetSwitches,
    },
];

/// Matches `path` against a template; returns the `{id}` segment, if any.
fn match_path<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut t = template.trim_matches('/').split('/');
    let mut p = path.trim_matches('/').split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for a request: `Ok((route, id))`, or 404 / 405 with `Allow`.
fn find_route<'p>(method: &Method, path: &'p str) -> Result<(&'static Route, &'p str), ApiError> {
    let mut allowed: Vec<&'static str> = Vec::new();
    for route in ROUTES {
        if let Some(id) = match_path(route.path, path) {
            if route.method == *method {
                return Ok((route, id.unwrap_or_default()));
            }
            allowed.push(route.method.as_str());
        }
    }
    match allowed.as_slice() {
        [] => Err(ApiError::NotFound),
        // Every path has one method today; the Allow header names it.
        [only, ..] => Err(ApiError::MethodNotAllowed { allow: only }),
    }
}

/// The route template: a bounded label for metrics and logs.
fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| match_path(r.path, path).is_some())
        .map_or("unknown", |r| r.path)
}

async fn route_request(
    state: &AppState,
    req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    // Before any signature is checked: a flood of garbage tokens from one
    // address costs a hash-map lookup each.
    state.limiter.check_ip(conn.peer.ip()).map_err(|r| {
        deny(state, None, "rate_limited_ip");
        ApiError::from(r)
    })?;
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
    match route.endpoint {
        Endpoint::PostTransaction => post_transaction(state, who, req, request_id, deadline).await,
        Endpoint::GetTransaction => get_transaction(state, &who, id).await,
        Endpoint::PostAccount => post_account(state, req).await,
        Endpoint::GetAccount => get_account(state, &who, id).await,
        Endpoint::GetSwitches => Ok(get_switches(state)),
    }
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
        ApiError::Unauthorized("a valid bearer token is required")
    })?;
    let config = state.config.load();
    if config.auth.require_sub_match_client_cert
        && config.server.client_ca.is_some()
        && conn.client_cert_cn.as_deref() != Some(who.client.as_str())
    {
        deny(state, Some(&who), "client_cert_mismatch");
        return Err(ApiError::Unauthorized(
            "the token's subject does not match the client certificate",
        ));
    }
    if !roles.iter().any(|r| who.has(*r)) {
        deny(state, Some(&who), "missing_role");
        return Err(ApiError::Forbidden(
            "the token lacks the role this route needs",
        ));
    }
    Ok(who)
}

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

/// Reads a bounded JSON body into `T`, naming the offending field on error.
async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit_bytes: usize,
) -> Result<T, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let media_type = ct.split(';').next().unwrap_or_default().trim();
        if media_type != "application/json" {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    let bytes = Limited::new(req.into_body(), limit_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge { limit_bytes }
            } else {
                ApiError::InvalidRequest(format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
    parse_json(&bytes)
}

/// Parses JSON into `T`; the error names the field (`amount: invalid type ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::InvalidRequest(message)
    })?;
    // One JSON document and nothing after it: trailing bytes would otherwise
    // be ignored, and a second document silently dropped.
    de.end()
        .map_err(|e| ApiError::InvalidRequest(format!("body: {e}")))?;
    Ok(value)
}

/// `POST /v1/transactions` as sent: parsed into [`TransactionRequest`] at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransactionBody {
    transaction_id: String,
    #[serde(rename = "type")]
    kind: TxKindBody,
    account_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    amount: i64,
    currency: String,
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TxKindBody {
    Debit,
    Credit,
    Transfer,
}

/// Largest `metadata` object, bytes of JSON.
const METADATA_BYTES_MAX: usize = 4096;

impl TransactionBody {
    pub fn parse(self, amount_max: i64) -> Result<TransactionRequest, ApiError> {
        let id = TransactionId::parse(&self.transaction_id)?;
        let required = |field: &'static str, v: Option<String>| {
            v.ok_or_else(|| ApiError::InvalidRequest(format!("{field}: is required for this type")))
        };
        let forbidden = |field: &'static str, v: &Option<String>| match v {
            Some(_) => Err(ApiError::InvalidRequest(format!(
                "{field}: is not allowed for this type"
            ))),
            None => Ok(()),
        };
        let movement = match self.kind {
            TxKindBody::Debit | TxKindBody::Credit => {
                forbidden("from", &self.from)?;
                forbidden("to", &self.to)?;
                let account = AccountId::parse(&required("accountId", self.account_id)?)?;
                if matches!(self.kind, TxKindBody::Debit) {
                    Movement::Debit { account }
                } else {
                    Movement::Credit { account }
                }
            }
            TxKindBody::Transfer => {
                forbidden("accountId", &self.account_id)?;
                let from = parse_field("from", &required("from", self.from)?)?;
                let to = parse_field("to", &required("to", self.to)?)?;
                if from == to {
                    return Err(ApiError::InvalidRequest("to: must differ from from".into()));
                }
                Movement::Transfer { from, to }
            }
        };
        let amount = Amount::parse("amount", self.amount, amount_max)?;
        let currency = Currency::parse(&self.currency)?;
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(ApiError::InvalidRequest(
                    "metadata: must be an object".into(),
                ));
            }
            if m.to_string().len() > METADATA_BYTES_MAX {
                return Err(ApiError::InvalidRequest(format!(
                    "metadata: must be at most {METADATA_BYTES_MAX} bytes of JSON"
                )));
            }
        }
        Ok(TransactionRequest {
            id,
            movement,
            amount,
            currency,
            metadata: self.metadata,
        })
    }
}

/// An account id in a field other than `accountId`, named as such in errors.
fn parse_field(field: &'static str, raw: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(raw).map_err(|e| ApiError::InvalidRequest(format!("{field}: {}", e.message)))
}

async fn post_transaction(
    state: &AppState,
    who: Principal,
    req: Request<Incoming>,
    request_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let body: TransactionBody = read_json(req, config.server.body_bytes_max).await?;
    let submission = Submission {
        client: who.client,
        request: body.parse(config.ledger.amount_max)?,
        request_id,
        deadline,
        forwarding: &config.forwarding,
    };
    let outcome = state
        .transactions
        .submit(submission, || state.limiter.try_begin_transaction())
        .await;
    let retry_after = Duration::from_secs(config.ledger.in_progress_retry_after_s);
    answer::transaction(&state.metrics, outcome, retry_after)
}

async fn get_transaction(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    // A malformed id cannot exist: answer exactly as for an absent one.
    let id = TransactionId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let record = state
        .ledger
        .transaction(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !who.has(Role::Auditor) && record.client != who.client.as_str() {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(StatusCode::OK, &transaction_json(&record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AccountBody {
    account_id: String,
    owner: String,
    currency: String,
    #[serde(default)]
    opening_balance: i64,
}

async fn post_account(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let body: AccountBody = read_json(req, config.server.body_bytes_max).await?;
    let id = AccountId::parse(&body.account_id)?;
    if id.as_str().starts_with("settlement:") || id.as_str().starts_with("equity:") {
        return Err(ApiError::InvalidRequest(
            "accountId: the settlement: and equity: prefixes are reserved".into(),
        ));
    }
    let owner = ClientId::parse(&body.owner)
        .map_err(|e| ApiError::InvalidRequest(format!("owner: {}", e.message)))?;
    let currency = Currency::parse(&body.currency)?;
    let max = config.ledger.opening_balance_max;
    if !(0..=max).contains(&body.opening_balance) {
        return Err(ApiError::InvalidRequest(format!(
            "openingBalance: must be 0 to {max}"
        )));
    }
    let account = state
        .ledger
        .create_account(&NewAccount {
            id,
            owner,
            currency,
            opening_balance: body.opening_balance,
        })
        .await?;
    Ok(json_response(StatusCode::CREATED, &account_json(&account)))
}

async fn get_account(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = AccountId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let account = state.ledger.account(&id).await?.ok_or(ApiError::NotFound)?;
    if !who.has(Role::Auditor) && account.owner != who.client.as_str() {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(StatusCode::OK, &account_json(&account)))
}

fn account_json(a: &Account) -> serde_json::Value {
    serde_json::json!({
        "accountId": a.id,
        "owner": a.owner,
        "currency": a.currency,
        "balance": a.balance,
        "kind": match a.kind { AccountKind::Customer => "customer", AccountKind::Settlement => "settlement" },
    })
}

fn get_switches(state: &AppState) -> Response<Body> {
    let switches: Vec<_> = state
        .switches
        .snapshot()
        .entries
        .iter()
        .map(|s| s.view())
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({ "switches": switches }))
}
