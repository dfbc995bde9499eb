//! One handler per endpoint of [`ROUTES`](crate::edge::ROUTES), called once
//! the request is authorized. Each returns `Result<_, ApiError>`.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Balancing;
use crate::domain::{AccountId, ClientId, Currency, Role, Spenders, TransactionId};
use crate::edge::answer;
use crate::edge::auth::Principal;
use crate::edge::body::{AccountBody, AccountPatchBody, BodyLimits, TransactionBody, read_json};
use crate::edge::error::{ApiError, Body, json_response};
use crate::edge::history::{PostingPage, TransactionPage, history_query, statement_query};
use crate::edge::state::AppState;
use crate::ledger::{Account, AccountKind, NewAccount, Scope};
use crate::switches::SwitchView;
use crate::transactions::{Submission, TransactionView};

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

/// `GET /v1/transactions/{id}[?clientId=]`. Ids are per client: a
/// `transact` caller reads its own; an auditor reads any client's, naming
/// the client when several used the id.
pub(super) async fn get_transaction(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    // A malformed id cannot exist: answer exactly as for an absent one.
    let id = TransactionId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let named = client_param(query)?;
    let record = if who.has(Role::Auditor) {
        match named {
            Some(client) => state.ledger.transaction(&client, &id).await?,
            None => {
                let mut found = state.ledger.transactions_with_id(&id, 2).await?;
                if found.len() > 1 {
                    return Err(ApiError::InvalidRequest(
                        "clientId: several clients used this transactionId; name one with \
                         ?clientId="
                            .into(),
                    ));
                }
                found.pop()
            }
        }
    } else {
        match named {
            // Another client's transactions do not exist for this caller.
            Some(client) if client != who.client => None,
            _ => state.ledger.transaction(&who.client, &id).await?,
        }
    };
    let record = record.ok_or(ApiError::NotFound)?;
    let attempts = state.ledger.attempts(&record.gateway_ref).await?;
    Ok(json_response(
        StatusCode::OK,
        &TransactionView::with_attempts(&record, &attempts),
    ))
}

/// The optional `clientId` query parameter; any other parameter is refused.
fn client_param(query: Option<&str>) -> Result<Option<ClientId>, ApiError> {
    let params = super::query::params(query, &["clientId"])?;
    params
        .first()
        .map(|(_, value)| {
            ClientId::parse(value)
                .map_err(|e| ApiError::InvalidRequest(format!("clientId: {}", e.message)))
        })
        .transpose()
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
    Ok(json_response(
        StatusCode::CREATED,
        &AccountView::full(&account),
    ))
}

pub(super) async fn get_account(
    state: &AppState,
    who: &Principal,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = AccountId::parse(raw_id).map_err(|_| ApiError::NotFound)?;
    let account = state.ledger.account(&id).await?.ok_or(ApiError::NotFound)?;
    // System (settlement, equity) accounts are owned by `system`: only
    // auditors read them, whatever a token's subject says.
    let customer = account.kind == AccountKind::Customer;
    let full = who.has(Role::Auditor) || (customer && account.owner == who.client);
    // A spender reads the balance it spends from, not who else may.
    let spender = customer && account.spenders.allows(&who.client);
    if !full && !spender {
        return Err(ApiError::NotFound);
    }
    let mut body = AccountView::full(&account);
    if !full {
        body.spenders = None;
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
    Ok(json_response(StatusCode::OK, &AccountView::full(&account)))
}

/// An account as the API shows it: the body of `POST /v1/accounts`,
/// `GET` and `PATCH /v1/accounts/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Account)]
pub struct AccountView {
    pub account_id: AccountId,
    /// The client (token `sub`) that owns it.
    #[schema(value_type = String)]
    pub owner: ClientId,
    pub currency: Currency,
    /// Minor units. Never below zero for customer accounts; settlement and
    /// equity accounts may go negative.
    #[schema(format = Int64)]
    pub balance: i64,
    #[schema(inline)]
    pub kind: AccountKindView,
    /// Shown to the owner, auditors and operators; absent for a spender
    /// reading the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Spenders>)]
    pub spenders: Option<Vec<String>>,
}

/// `settlement` covers the settlement (per switch and currency) and equity
/// (per currency) accounts, owned by `system`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountKindView {
    Customer,
    Settlement,
}

impl AccountView {
    /// Everything, spenders included.
    fn full(a: &Account) -> Self {
        Self {
            account_id: a.id.clone(),
            owner: a.owner.clone(),
            currency: a.currency.clone(),
            balance: a.balance,
            kind: match a.kind {
                AccountKind::Customer => AccountKindView::Customer,
                AccountKind::Settlement => AccountKindView::Settlement,
            },
            spenders: Some(a.spenders.to_list()),
        }
    }
}

/// The body of `GET /v1/switches`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Switches)]
pub struct SwitchesView {
    pub switches: Vec<SwitchView>,
    /// `forwarding.balancing` now.
    #[schema(inline)]
    pub balancing: Balancing,
    /// Fewer switches in rotation than `health.panic_threshold_percent` of
    /// the list.
    pub panic: bool,
}

pub(super) fn get_switches(state: &AppState) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &SwitchesView {
            switches: state.switches.views(),
            balancing: state.switches.balance_settings().mode,
            panic: state.switches.in_panic(),
        },
    )
}
