-- Idempotency keys per client (same as migrations/postgres/0007_per_client_ids.sql,
-- which says why): `gateway_ref` (the old `id`, renamed; the foreign keys of
-- attempts and postings follow the rename) is the primary key, and `id`, the
-- client's `transactionId`, is unique together with `client`.
ALTER TABLE transactions RENAME COLUMN id TO gateway_ref;
ALTER TABLE transactions ADD COLUMN id TEXT NOT NULL DEFAULT '';
UPDATE transactions SET id = gateway_ref;
CREATE UNIQUE INDEX transactions_id_client ON transactions (id, client);
ALTER TABLE attempts RENAME COLUMN transaction_id TO gateway_ref;
ALTER TABLE postings RENAME COLUMN transaction_id TO gateway_ref;
