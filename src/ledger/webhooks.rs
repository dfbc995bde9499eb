//! Webhooks in the ledger (issue 13): the registered endpoints, and the
//! outbox of their deliveries. The outbox rows themselves are written by the
//! batches that make a transaction final (`group/postgres.rs`,
//! `group/sqlite.rs`: `webhook_deliveries` joined from
//! `webhook_subscriptions`), so a delivery exists iff the final state does;
//! here are the one-at-a-time operations: registration, and the delivery
//! worker's claims and ends (fenced by the claim's token, like the
//! reconciler's).

use sqlx::{AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::sql::{Fail, SqlBackend, now_ms, with_retries};
use super::{LeaseToken, LedgerError};
use crate::domain::{ClientId, GatewayRef, WebhookEvent};

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub client: ClientId,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// The signing secret (hex); shown once, at registration.
    pub secret: String,
    pub created_at_ms: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One event for one webhook, in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `{webhookId}.{gatewayRef}`.
    pub id: String,
    pub webhook_id: String,
    pub gateway_ref: GatewayRef,
    pub event: WebhookEvent,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    /// When the transaction became final: the event's `createdAt`.
    pub created_at_ms: i64,
    /// When an operator last queued it again, if ever.
    pub redelivered_at_ms: Option<i64>,
}

impl Delivery {
    /// The event's id, the same for every webhook and every attempt: a
    /// transaction becomes final once.
    pub fn event_id(&self) -> String {
        format!("evt_{}", self.gateway_ref.as_str())
    }

    /// Where `webhooks.horizon_ms` counts from: the event, or the last
    /// redelivery.
    pub fn window_start_ms(&self) -> i64 {
        self.redelivered_at_ms.unwrap_or(self.created_at_ms)
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEnd {
    Delivered,
    /// Try again `after_ms` from now (the ledger's clock).
    Retry {
        after_ms: i64,
        error: String,
    },
    /// Out of retries (or the webhook is gone): operators see it.
    Failed {
        error: String,
    },
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct WebhookRow {
    id: String,
    client: String,
    url: String,
    events: String,
    secret: String,
    created_at_ms: i64,
    deleted_at_ms: Option<i64>,
}

impl WebhookRow {
    fn into_webhook(self) -> Result<Webhook, LedgerError> {
        let client = ClientId::parse(&self.client)
            .map_err(|_| LedgerError::Unavailable(format!("stored webhook {}: client", self.id)))?;
        let events = self
            .events
            .split(',')
            .map(|e| {
                WebhookEvent::parse(e).ok_or_else(|| {
                    LedgerError::Unavailable(format!("stored webhook {}: event {e}", self.id))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Webhook {
            id: self.id,
            client,
            url: self.url,
            events,
            secret: self.secret,
            created_at_ms: self.created_at_ms,
            deleted: self.deleted_at_ms.is_some(),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeliveryRow {
    id: String,
    webhook_id: String,
    gateway_ref: String,
    event_type: String,
    status: String,
    attempts: i64,
    next_attempt_at_ms: i64,
    last_error: Option<String>,
    created_at_ms: i64,
    redelivered_at_ms: Option<i64>,
}

impl DeliveryRow {
    fn into_delivery(self) -> Result<Delivery, LedgerError> {
        let bad =
            |what: &str| LedgerError::Unavailable(format!("stored delivery {}: {what}", self.id));
        let event = WebhookEvent::parse(&self.event_type).ok_or_else(|| bad("event_type"))?;
        let status = match self.status.as_str() {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => return Err(bad("status")),
        };
        Ok(Delivery {
            id: self.id,
            webhook_id: self.webhook_id,
            gateway_ref: GatewayRef::from_stored(self.gateway_ref),
            event,
            status,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at_ms: self.next_attempt_at_ms,
            last_error: self.last_error,
            created_at_ms: self.created_at_ms,
            redelivered_at_ms: self.redelivered_at_ms,
        })
    }
}

const WEBHOOK_COLUMNS: &str = "id, client, url, events, secret, created_at_ms, deleted_at_ms";
const DELIVERY_COLUMNS: &str = "id, webhook_id, gateway_ref, event_type, status, attempts, \
     next_attempt_at_ms, last_error, created_at_ms, redelivered_at_ms";

type Conn<B> = <<B as SqlBackend>::Db as Database>::Connection;

/// The webhook operations, written once over both backends (the bounds are
/// [`SqlBackend`]'s, with the rows read here).
pub(super) trait WebhookSql: SqlBackend
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Encode<'a, Self::Db> + Type<Self::Db>,
    for<'a> Option<&'a str>: Encode<'a, Self::Db>,
    for<'a> i64: Encode<'a, Self::Db> + Type<Self::Db>,
    for<'a> Option<i64>: Encode<'a, Self::Db>,
    (i64,): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (i64, i64): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (i64, String): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (String,): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    super::sql::TxRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    super::sql::AccountRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    super::sql::AttemptRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    super::sql::PostingRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    WebhookRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    DeliveryRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
{
    /// Registers a webhook and its subscriptions, in one transaction.
    async fn create_webhook(
        &self,
        client: &ClientId,
        url: &str,
        events: &[WebhookEvent],
        secret: &str,
        per_client_max: u32,
    ) -> Result<Webhook, LedgerError> {
        let id = format!("wh_{:024x}", rand::random::<u128>() >> 32);
        let joined = events
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let (id, joined) = (id.as_str(), joined.as_str());
        with_retries(
            "create_webhook",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let now = now_ms();
                let mut tx = self.begin_write().await?;
                // Counted in the registration's own transaction (SQLite:
                // serialized; Postgres: two registrations of one client at
                // the same instant may pass it by one).
                let (live,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM webhooks WHERE client = $1 AND deleted_at_ms IS NULL",
                )
                .bind(client.as_str())
                .fetch_one(tx.conn())
                .await?;
                if live >= i64::from(per_client_max) {
                    return Err(LedgerError::LimitReached(format!(
                        "client: already has {live} webhooks, the most one client may have \
                         (webhooks.per_client_max); delete one first"
                    ))
                    .into());
                }
                sqlx::query(
                    "INSERT INTO webhooks (id, client, url, events, secret, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(client.as_str())
                .bind(url)
                .bind(joined)
                .bind(secret)
                .bind(now)
                .execute(tx.conn())
                .await?;
                for e in events {
                    sqlx::query(
                        "INSERT INTO webhook_subscriptions (client, status, webhook_id) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind(client.as_str())
                    .bind(e.status().as_str())
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                }
                tx.commit().await?;
                Ok(Webhook {
                    id: id.to_owned(),
                    client: client.clone(),
                    url: url.to_owned(),
                    events: events.to_vec(),
                    secret: secret.to_owned(),
                    created_at_ms: now,
                    deleted: false,
                })
            },
        )
        .await
    }

    /// The live webhooks, oldest first, at most `limit`.
    async fn webhooks(&self, limit: u32) -> Result<Vec<Webhook>, LedgerError> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at_ms IS NULL \
             ORDER BY created_at_ms, id LIMIT $1"
        );
        let sql = sql.as_str();
        with_retries(
            "webhooks",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let rows: Vec<WebhookRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(WebhookRow::into_webhook)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    /// A webhook by id, deleted ones included.
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, LedgerError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        let sql = sql.as_str();
        with_retries(
            "webhook",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let row: Option<WebhookRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
                Ok(row.map(WebhookRow::into_webhook).transpose()?)
            },
        )
        .await
    }

    /// Deletes a live webhook: no new deliveries from the next batch on
    /// (its subscriptions go in the same transaction); `false` if none.
    async fn delete_webhook(&self, id: &str) -> Result<bool, LedgerError> {
        with_retries(
            "delete_webhook",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE webhooks SET deleted_at_ms = $2 WHERE id = $1 AND deleted_at_ms IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .execute(tx.conn())
                .await?;
                if Self::rows_affected(&done) == 0 {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM webhook_subscriptions WHERE webhook_id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
                Ok(true)
            },
        )
        .await
    }

    /// Claims up to `limit` due deliveries whose lease ran out, for
    /// `lease_ms`, under `token` (Postgres: `FOR UPDATE SKIP LOCKED`, so
    /// replicas never claim the same row while its lease runs).
    async fn claim_deliveries(
        &self,
        lease_ms: i64,
        limit: u32,
        token: &LeaseToken,
    ) -> Result<Vec<Delivery>, LedgerError> {
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until_ms = $1, lease_token = $2 \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_attempt_at_ms <= $3 \
                 AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
                 ORDER BY next_attempt_at_ms LIMIT $4 {}) RETURNING {DELIVERY_COLUMNS}",
            Self::CLAIM_LOCK
        );
        let sql = sql.as_str();
        with_retries(
            "claim_deliveries",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let now = now_ms();
                let mut tx = self.begin_write().await?;
                let rows: Vec<DeliveryRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(now.saturating_add(lease_ms))
                    .bind(token.as_str())
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(tx.conn())
                    .await?;
                tx.commit().await?;
                Ok(rows
                    .into_iter()
                    .map(DeliveryRow::into_delivery)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    /// Ends an attempt of a claimed delivery; `false` (nothing written) when
    /// the lease was claimed by another since.
    async fn end_delivery(
        &self,
        id: &str,
        token: &LeaseToken,
        end: &DeliveryEnd,
    ) -> Result<bool, LedgerError> {
        let (status, next, error) = match end {
            DeliveryEnd::Delivered => ("delivered", None, None),
            DeliveryEnd::Retry { after_ms, error } => {
                ("pending", Some(*after_ms), Some(error.as_str()))
            }
            DeliveryEnd::Failed { error } => ("failed", None, Some(error.as_str())),
        };
        with_retries(
            "end_delivery",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let now = now_ms();
                let done = sqlx::query(
                    "UPDATE webhook_deliveries SET status = $3, attempts = attempts + 1, \
                         next_attempt_at_ms = $4, last_error = $5, lease_until_ms = NULL, \
                         finished_at_ms = $6 \
                     WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
                )
                .bind(id)
                .bind(token.as_str())
                .bind(status)
                .bind(next.map_or(now, |after| now.saturating_add(after)))
                .bind(error)
                .bind(if next.is_some() { None } else { Some(now) })
                .execute(self.pool())
                .await?;
                Ok(Self::rows_affected(&done) == 1)
            },
        )
        .await
    }

    /// A webhook's failed deliveries, newest first, at most `limit`.
    async fn failed_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, LedgerError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE webhook_id = $1 AND status = 'failed' \
             ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let sql = sql.as_str();
        with_retries(
            "failed_deliveries",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let rows: Vec<DeliveryRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(webhook_id)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(DeliveryRow::into_delivery)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    /// A failed delivery back in the queue, due now, its attempts counted
    /// again from zero; `None` when no failed delivery has that id.
    async fn redeliver(&self, id: &str) -> Result<Option<Delivery>, LedgerError> {
        let sql = format!(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, \
                 next_attempt_at_ms = $2, lease_until_ms = NULL, finished_at_ms = NULL, \
                 redelivered_at_ms = $2 \
             WHERE id = $1 AND status = 'failed' RETURNING {DELIVERY_COLUMNS}"
        );
        let sql = sql.as_str();
        with_retries(
            "redeliver",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let row: Option<DeliveryRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(now_ms())
                    .fetch_optional(self.pool())
                    .await?;
                Ok(row.map(DeliveryRow::into_delivery).transpose()?)
            },
        )
        .await
    }

    /// How many deliveries wait (`pending`): the backlog gauge.
    async fn delivery_backlog(&self) -> Result<i64, LedgerError> {
        with_retries(
            "delivery_backlog",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
                )
                .fetch_one(self.pool())
                .await?;
                Ok::<_, Fail>(n)
            },
        )
        .await
    }
}

impl WebhookSql for super::postgres::PgLedger {}
impl WebhookSql for super::sqlite::SqliteLedger {}
