//! One handler per endpoint of [`ROUTES`](crate::edge::ROUTES), called once
//! the request is authorized. Each returns `Result<_, ApiError>`.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::domain::{AccountId, ClientId, Currency, Role, Spenders, TransactionId};
use crate::edge::answer;
use crate::edge::auth::Principal;
use crate::edge::body::{AccountBody, AccountPatchBody, BodyLimits, TransactionBody, read_json};
use crate::edge::error::{ApiError, Body, json_response};
use crate::edge::state::AppState;
use crate::ledger::{Account, AccountKind, NewAccount};
use crate::transactions::{Submission, transaction_json};

pub(super) async fn post_transaction(
    state: &AppState,
    who: Principal,
    req: Request<Incoming>,
    request_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let body: TransactionBody = read_json(req, BodyLimits::new(&config.server, deadline)).await?;
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

pub(super) async fn get_transaction(
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
    if !who.has(Role::Auditor) && record.client != who.client {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(StatusCode::OK, &transaction_json(&record)))
}

pub(super) async fn post_account(
    state: &AppState,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let body: AccountBody = read_json(req, BodyLimits::new(&config.server, deadline)).await?;
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
    let spenders = Spenders::parse(&body.spenders, config.ledger.spenders_max)?;
    let account = state
        .ledger
        .create_account(&NewAccount {
            id,
            owner,
            currency,
            opening_balance: body.opening_balance,
            spenders,
        })
        .await?;
    Ok(json_response(StatusCode::CREATED, &account_json(&account)))
}

pub(super) async fn get_account(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = AccountId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let account = state.ledger.account(&id).await?.ok_or(ApiError::NotFound)?;
    let full = who.has(Role::Auditor) || account.owner == who.client;
    // A spender reads the balance it spends from, not who else may.
    if !full && !account.spenders.allows(&who.client) {
        return Err(ApiError::NotFound);
    }
    let mut body = account_json(&account);
    if !full && let Some(obj) = body.as_object_mut() {
        obj.remove("spenders");
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `PATCH /v1/accounts/{id}` (`operator`): replaces the account's spenders.
pub(super) async fn patch_account(
    state: &AppState,
    req: Request<Incoming>,
    raw_id: &str,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let id = AccountId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let body: AccountPatchBody = read_json(req, BodyLimits::new(&config.server, deadline)).await?;
    let spenders = Spenders::parse(&body.spenders, config.ledger.spenders_max)?;
    let account = state
        .ledger
        .set_spenders(&id, &spenders)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_response(StatusCode::OK, &account_json(&account)))
}

fn account_json(a: &Account) -> serde_json::Value {
    serde_json::json!({
        "accountId": a.id,
        "owner": a.owner,
        "currency": a.currency,
        "balance": a.balance,
        "kind": match a.kind { AccountKind::Customer => "customer", AccountKind::Settlement => "settlement" },
        "spenders": a.spenders.to_list(),
    })
}

pub(super) fn get_switches(state: &AppState) -> Response<Body> {
    let switches = state.switches.views();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "switches": switches,
            "balancing": state.switches.balance_settings().mode,
            "panic": state.switches.in_panic(),
        }),
    )
}
