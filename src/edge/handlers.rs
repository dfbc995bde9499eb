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
use crate::edge::history::{PostingPage, TransactionPage, history_query, statement_query};
use crate::edge::state::AppState;
use crate::ledger::{Account, AccountKind, NewAccount, Scope};
use crate::transactions::{Submission, transaction_with_attempts_json};

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

/// `GET /v1/transactions`: a page of the caller's transactions (an
/// auditor's: everyone's), newest first.
pub(super) async fn list_transactions(
    state: &AppState,
    who: &Principal,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let scope = if who.has(Role::Auditor) {
        Scope::All
    } else {
        Scope::Client(who.client.clone())
    };
    let q = history_query(query, scope, &config.ledger)?;
    let page = state.ledger.transactions_page(&q).await?;
    Ok(json_response(StatusCode::OK, &TransactionPage::new(&page)))
}

/// `GET /v1/transactions/{id}`: the transaction with its attempts. The
/// transaction id is the ledger's key today, so one row answers; with ids
/// scoped per client an auditor may find several.
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
    let attempts = state.ledger.attempts(&id).await?;
    Ok(json_response(
        StatusCode::OK,
        &transaction_with_attempts_json(&record, &attempts),
    ))
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
    if !full {
        if let Some(obj) = body.as_object_mut() {
            obj.remove("spenders");
        }
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/accounts/{id}/postings`: the account's statement, newest
/// first. Its owner's and auditors' only: a spender reads the balance, not
/// the history, and to anyone else the account answers as absent (a system
/// account too, whatever the caller's name).
pub(super) async fn get_postings(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let id = AccountId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let config = state.config.load();
    let q = statement_query(query, id, &config.ledger)?;
    let account = state
        .ledger
        .account(&q.account)
        .await?
        .ok_or(ApiError::NotFound)?;
    let owner = account.kind == AccountKind::Customer && account.owner == who.client;
    if !owner && !who.has(Role::Auditor) {
        return Err(ApiError::NotFound);
    }
    let page = state.ledger.postings_page(&q).await?;
    Ok(json_response(StatusCode::OK, &PostingPage::new(&page)))
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
