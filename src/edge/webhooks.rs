//! Webhooks (issue 13): the handlers of `/v1/webhooks…` (role `operator`),
//! the body they read and the views they answer.

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::domain::{ClientId, WebhookEvent, rfc3339_ms};
use crate::edge::body::{BodyFields, BodyLimits, read_json};
use crate::edge::error::{ApiError, Body, json_response};
use crate::edge::state::AppState;
use crate::ledger::{Delivery, DeliveryStatus, Webhook};

/// `POST /v1/webhooks`: an endpoint for one client's events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = WebhookRequest)]
pub(super) struct WebhookBody {
    /// The client whose transactions raise the events.
    pub(super) client: String,
    /// Where events are POSTed: `https://…` (`http://` only with
    /// `webhooks.allow_http`).
    pub(super) url: String,
    /// Which final states to be told of; at least one.
    pub(super) events: Vec<WebhookEvent>,
}

impl<'de> Deserialize<'de> for WebhookEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        WebhookEvent::parse(&raw).ok_or_else(|| serde::de::Error::custom(EVENTS))
    }
}

const EVENTS: &str =
    "must be a list of transaction.committed, transaction.declined, transaction.failed";

impl BodyFields for WebhookBody {
    const FIELDS: &'static [&'static str] = &["client", "url", "events"];
    fn expects(field: &str) -> Option<&'static str> {
        Some(match field {
            "client" | "url" => "must be a string",
            "events" => EVENTS,
            _ => return None,
        })
    }
}

/// A webhook as the API shows it. `secret` only in the answer to its
/// registration.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Webhook)]
pub struct WebhookView {
    pub webhook_id: String,
    pub client: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// RFC 3339, ms.
    pub created_at: String,
    /// The signing secret: shown once, when the webhook is registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub secret: Option<String>,
}

impl WebhookView {
    fn of(w: &Webhook, with_secret: bool) -> Self {
        Self {
            webhook_id: w.id.clone(),
            client: w.client.as_str().to_owned(),
            url: w.url.clone(),
            events: w.events.clone(),
            created_at: rfc3339_ms(w.created_at_ms),
            secret: with_secret.then(|| w.secret.clone()),
        }
    }
}

/// The body of `GET /v1/webhooks`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Webhooks)]
pub struct WebhooksView {
    /// Oldest first, at most `webhooks.list_max`.
    pub data: Vec<WebhookView>,
}

/// One event for one webhook.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryView {
    pub delivery_id: String,
    pub webhook_id: String,
    /// The event's id (`evt_…`): the same in every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event: WebhookEvent,
    /// The transaction's `gatewayRef`.
    pub gateway_ref: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_error: Option<String>,
    /// When the event happened, RFC 3339, ms.
    pub created_at: String,
}

impl DeliveryView {
    fn of(d: &Delivery) -> Self {
        Self {
            delivery_id: d.id.clone(),
            webhook_id: d.webhook_id.clone(),
            event_id: d.event_id(),
            event: d.event,
            gateway_ref: d.gateway_ref.as_str().to_owned(),
            status: match d.status {
                DeliveryStatus::Pending => "pending",
                DeliveryStatus::Delivered => "delivered",
                DeliveryStatus::Failed => "failed",
            }
            .to_owned(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            created_at: rfc3339_ms(d.created_at_ms),
        }
    }
}

/// The body of `GET /v1/webhooks/{id}/failed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = WebhookDeliveries)]
pub struct DeliveriesView {
    /// Newest first, at most `webhooks.list_max`.
    pub data: Vec<DeliveryView>,
}

/// `https://host…` (or `http://` when allowed), no user info, bounded.
fn check_url(raw: &str, allow_http: bool, bytes_max: usize) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::InvalidRequest(format!("url: {why}"));
    if raw.len() > bytes_max {
        return Err(bad(&format!("at most {bytes_max} bytes")));
    }
    let uri: Uri = raw.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => return Err(bad("must be https:// (http:// needs webhooks.allow_http)")),
        _ => return Err(bad("must be an https:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("must name a host"));
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad("must name a host, without user info"));
    }
    Ok(raw.to_owned())
}

/// 128 random bits, hex, prefixed.
fn new_secret() -> String {
    format!("whsec_{:032x}", rand::random::<u128>())
}

pub(super) async fn post_webhook(
    state: &AppState,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let config = state.config.load();
    let body: WebhookBody = read_json(req, BodyLimits::new(&config.server, deadline)).await?;
    let client = ClientId::parse(&body.client)
        .map_err(|e| ApiError::InvalidRequest(format!("client: {}", e.message)))?;
    let url = check_url(
        &body.url,
        config.webhooks.allow_http,
        config.webhooks.url_bytes_max,
    )?;
    let mut events = body.events;
    events.sort_unstable();
    events.dedup();
    if events.is_empty() {
        return Err(ApiError::InvalidRequest(format!(
            "events: {EVENTS}, not empty"
        )));
    }
    let hook = state
        .ledger
        .create_webhook(
            &client,
            &url,
            &events,
            &new_secret(),
            config.webhooks.per_client_max,
        )
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &WebhookView::of(&hook, true),
    ))
}

pub(super) async fn get_webhooks(state: &AppState) -> Result<Response<Body>, ApiError> {
    let limit = state.config.load().webhooks.list_max;
    let hooks = state.ledger.webhooks(limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &WebhooksView {
            data: hooks.iter().map(|w| WebhookView::of(w, false)).collect(),
        },
    ))
}

/// A live webhook by id, or 404.
async fn live(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    match state.ledger.webhook(id).await? {
        Some(w) if !w.deleted => Ok(w),
        _ => Err(ApiError::NotFound),
    }
}

/// Answers the webhook as it was; its pending deliveries end as failed
/// ("deleted") when the worker next claims them.
pub(super) async fn delete_webhook(state: &AppState, id: &str) -> Result<Response<Body>, ApiError> {
    let hook = live(state, id).await?;
    if !state.ledger.delete_webhook(id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(
        StatusCode::OK,
        &WebhookView::of(&hook, false),
    ))
}

pub(super) async fn get_failed(state: &AppState, id: &str) -> Result<Response<Body>, ApiError> {
    let hook = live(state, id).await?;
    let limit = state.config.load().webhooks.list_max;
    let failed = state.ledger.failed_deliveries(&hook.id, limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &DeliveriesView {
            data: failed.iter().map(DeliveryView::of).collect(),
        },
    ))
}

/// Queues a failed delivery again (due now, its attempts and horizon
/// counted afresh); 404 unless a failed delivery has that id.
pub(super) async fn post_redeliver(state: &AppState, id: &str) -> Result<Response<Body>, ApiError> {
    let d = state
        .ledger
        .redeliver(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_response(StatusCode::ACCEPTED, &DeliveryView::of(&d)))
}
