-- History (same as migrations/postgres/0008_history_indexes.sql, see the
-- costs there): the reads of GET /v1/transactions and
-- GET /v1/accounts/{id}/postings, newest first with keyset pagination, each
-- page an index range scan.
--
-- A `transact` client's own transactions, by creation time.
CREATE INDEX IF NOT EXISTS transactions_client_created_at_ms
    ON transactions (client, created_at_ms, gateway_ref);
-- The same for an auditor, across every client.
CREATE INDEX IF NOT EXISTS transactions_created_at_ms ON transactions (created_at_ms, gateway_ref);
-- An account's statement by posting id: replaces the index by account alone.
CREATE INDEX IF NOT EXISTS postings_account_id_id ON postings (account_id, id);
DROP INDEX IF EXISTS postings_account_id;
