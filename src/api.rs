//! The client API (HTTPS) and the ops endpoints (plain HTTP).
//!
//! Order of the front end, per request: request id → deadline → route →
//! authentication → role → body parsing into domain types → handler.
//! Handlers return `Result<_, ApiError>`; `ApiError::into_response` is the one
//! place an error becomes HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Authenticator, Principal};
use crate::config::Config;
use crate::domain::{
    AccountId, Amount, ClientId, Currency, Movement, Role, TransactionId, TransactionRequest,
};
use crate::error::{ApiError, Body, json_response};
use crate::flow::{self, Forwarder, Outcome};
use crate::ledger::{Account, AccountKind, Ledger, NewAccount, Reserved};
use crate::metrics::Metrics;
use crate::server::{ConnInfo, Handler};
use crate::switch::{SwitchClient, Switches};

/// Everything a request may need, shared by all connections.
pub struct AppState {
    /// The running configuration; reloads swap it whole.
    pub config: Arc<ArcSwap<Config>>,
    pub ledger: Ledger,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub switches: Arc<Switches>,
    pub switch_client: SwitchClient,
    /// Set once start-up finished; cleared when shutdown begins.
    pub ready: AtomicBool,
    /// Transactions being forwarded. They finish even when their client
    /// hangs up, and shutdown waits for them.
    pub transactions: TaskTracker,
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

/// Longest accepted incoming `X-Request-Id`.
const REQUEST_ID_LEN_MAX: usize = 128;

impl Handler for Api {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.0;
        let started = Instant::now();
        let request_id = request_id(&req);
        let route = route_label(req.uri().path());
        let span =
            tracing::info_span!("request", request_id = %request_id, method = %req.method(), route);
        let in_flight = InFlightGuard::new(&state.metrics.http_in_flight);
        let deadline = started + state.config.load().server.request_deadline();
        let work = route_request(state, req, &request_id, deadline);
        let mut resp = match tokio::time::timeout_at(deadline, work)
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

/// The route template: a bounded label for metrics and logs.
fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "transactions"] => "/v1/transactions",
        ["v1", "transactions", _] => "/v1/transactions/{id}",
        ["v1", "accounts"] => "/v1/accounts",
        ["v1", "accounts", _] => "/v1/accounts/{id}",
        ["v1", "switches"] => "/v1/switches",
        _ => "unknown",
    }
}

async fn route_request(
    state: &AppState,
    req: Request<Incoming>,
    request_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["v1", "transactions"], Method::POST) => {
            let who = authorize(state, &req, &[Role::Transact])?;
            post_transaction(state, who, req, request_id, deadline).await
        }
        (["v1", "transactions", id], Method::GET) => {
            let who = authorize(state, &req, &[Role::Transact, Role::Auditor])?;
            get_transaction(state, &who, id).await
        }
        (["v1", "accounts"], Method::POST) => {
            authorize(state, &req, &[Role::Operator])?;
            post_account(state, req).await
        }
        (["v1", "accounts", id], Method::GET) => {
            let who = authorize(state, &req, &[Role::Transact, Role::Auditor])?;
            get_account(state, &who, id).await
        }
        (["v1", "switches"], Method::GET) => {
            authorize(state, &req, &[Role::Operator])?;
            Ok(get_switches(state))
        }
        (["v1", "transactions"] | ["v1", "accounts"], _) => {
            Err(ApiError::MethodNotAllowed { allow: "POST" })
        }
        (["v1", "transactions" | "accounts", _] | ["v1", "switches"], _) => {
            Err(ApiError::MethodNotAllowed { allow: "GET" })
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Verifies the bearer token and that it carries one of `roles`.
fn authorize<B>(state: &AppState, req: &Request<B>, roles: &[Role]) -> Result<Principal, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let who = state.auth.verify(header).map_err(|e| {
        tracing::info!(reason = %e, "unauthorized");
        ApiError::Unauthorized("a valid bearer token is required")
    })?;
    if !roles.iter().any(|r| who.has(*r)) {
        tracing::info!(client = %who.client, "forbidden: missing role");
        return Err(ApiError::Forbidden(
            "the token lacks the role this route needs",
        ));
    }
    Ok(who)
}

/// Reads a bounded JSON body into `T`, naming the offending field on error.
async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit_bytes: usize,
) -> Result<T, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.starts_with("application/json") {
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
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::InvalidRequest(message)
    })?;
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
    let tx = body.parse(config.ledger.amount_max)?;

    // Fail closed: with no healthy switch to send it to, reserve nothing.
    if !state.switches.any_available() {
        count(state, "no_switch");
        return Err(ApiError::NoSwitchAvailable);
    }

    let reserve_started = Instant::now();
    let reserved = state.ledger.reserve(&who.client, &tx, flow::RENDER).await;
    state
        .metrics
        .ledger_duration
        .observe(reserve_started.elapsed().as_secs_f64());
    match reserved? {
        Reserved::Existing(record) => {
            // Another client's id, or this id with another payload: "reused",
            // never a look at someone else's transaction.
            if record.client != who.client.as_str() || record.fingerprint != tx.fingerprint() {
                count(state, "reused");
                return Err(ApiError::TransactionIdReused);
            }
            match &record.response {
                Some(stored) if record.status.is_final() => {
                    count(state, "replayed");
                    let mut resp = stored_response(stored);
                    resp.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    Ok(resp)
                }
                _ => {
                    count(state, "in_progress");
                    Err(ApiError::TransactionInProgress {
                        retry_after: Duration::from_secs(config.ledger.in_progress_retry_after_s),
                    })
                }
            }
        }
        Reserved::InsufficientFunds(record) => {
            count(state, "insufficient_funds");
            Ok(stored_response(&flow::stored(&record)))
        }
        Reserved::Fresh(_) => {
            let forwarder = Forwarder {
                ledger: state.ledger.clone(),
                switches: state.switches.clone(),
                client: state.switch_client.clone(),
                metrics: state.metrics.clone(),
                attempts_max: config.forwarding.attempts_max,
                attempt_timeout: config.forwarding.attempt_timeout(),
            };
            // Once money is reserved the flow runs to its end on its own
            // task: a client hanging up must not strand the transaction.
            let request_id = request_id.to_owned();
            let span = tracing::Span::current();
            let task = state.transactions.spawn(
                async move { forwarder.run(&tx, &request_id, deadline).await }.instrument(span),
            );
            let outcome = task.await.map_err(|e| {
                tracing::error!(error = %e, "transaction task failed");
                ApiError::Internal
            })??;
            match outcome {
                Outcome::Final(stored) => {
                    let outcome = match stored.status {
                        201 => "committed",
                        422 => "declined",
                        _ => "failed",
                    };
                    count(state, outcome);
                    Ok(stored_response(&stored))
                }
                Outcome::Pending(record) => {
                    count(state, "pending");
                    let mut resp =
                        json_response(StatusCode::ACCEPTED, &flow::transaction_json(&record));
                    if let Ok(v) = HeaderValue::from_str(&format!("/v1/transactions/{}", record.id))
                    {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    Ok(resp)
                }
            }
        }
    }
}

fn count(state: &AppState, outcome: &str) {
    state
        .metrics
        .transactions
        .with_label_values(&[outcome])
        .inc();
}

fn stored_response(stored: &crate::ledger::StoredResponse) -> Response<Body> {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    json_response(status, &stored.body)
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
    Ok(json_response(
        StatusCode::OK,
        &flow::transaction_json(&record),
    ))
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

/// The ops listener: `/healthz`, `/readyz`, `/metrics`.
#[derive(Clone)]
pub struct Ops(pub Arc<AppState>);

impl Handler for Ops {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
        let state = &self.0;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::MethodNotAllowed { allow: "GET" }.into_response();
        }
        match req.uri().path() {
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
