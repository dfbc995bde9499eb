-- Webhooks (same shape as migrations/sqlite/0009_webhooks.sql).
-- `webhooks`: the endpoints operators registered, one client each; a deleted
-- one keeps its row (`deleted_at_ms`) so its deliveries still name it.
-- `webhook_subscriptions`: one row per (client, final status, webhook) of a
-- live webhook, the table a batch that makes rows final joins: a client
-- without webhooks costs one probe of its primary key.
-- `webhook_deliveries`: the outbox, written by the statement that makes a
-- transaction final (so a delivery exists iff the final state does); one row
-- per (webhook, transaction), claimed under a fenced lease by the delivery
-- workers of every replica.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    deleted_at_ms BIGINT
);
CREATE TABLE webhook_subscriptions (
    client TEXT NOT NULL,
    status TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    PRIMARY KEY (client, status, webhook_id)
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    gateway_ref TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    lease_until_ms BIGINT,
    lease_token TEXT,
    last_error TEXT,
    created_at_ms BIGINT NOT NULL,
    redelivered_at_ms BIGINT,
    finished_at_ms BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (webhook_id, created_at_ms)
    WHERE status = 'failed';
