-- Idempotency keys per client (same as migrations/sqlite/0007_per_client_ids.sql).
-- A client's `transactionId` was the primary key, unique across all clients:
-- one client could take an id before another used it, and learn whether an
-- id existed. Now:
-- - `gateway_ref`, the gateway's own reference, unique across clients, is
--   the primary key (the old `id` column, renamed: a row stored before keeps
--   its old id as its reference, which is what switches already recorded it
--   under, as Idempotency-Key);
-- - `id` is the client's `transactionId`, unique together with `client`.
--   The index leads with `id`, so an auditor's lookup by id alone (any
--   client) is a range of it too.
-- Attempts and postings name their transaction by its reference.
-- Filling `id` rewrites every existing row once.
ALTER TABLE transactions RENAME COLUMN id TO gateway_ref;
ALTER TABLE transactions ADD COLUMN id TEXT;
UPDATE transactions SET id = gateway_ref;
ALTER TABLE transactions ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX transactions_id_client ON transactions (id, client);
ALTER TABLE attempts RENAME COLUMN transaction_id TO gateway_ref;
ALTER TABLE postings RENAME COLUMN transaction_id TO gateway_ref;
