-- History (same as migrations/sqlite/0008_history_indexes.sql): the reads of
-- GET /v1/transactions and GET /v1/accounts/{id}/postings, newest first with
-- keyset pagination, each page an index range scan however long the history.
-- Built with IF NOT EXISTS: on a large table an operator may build them
-- first with CREATE INDEX CONCURRENTLY under these names (docs/operations.md,
-- "Migrations"), and this migration then only checks they are there.
--
-- Two indexes on `transactions`, the fewest that serve the listing. Each
-- costs an entry on every insert (the reserve batch) and again on every
-- update that changes the row (record_attempt, mark_pending and the finish
-- batch: none is HOT, as `updated_at_ms` is in the in-flight index and
-- `status` in its predicate), so at least two entries per transaction each,
-- an entry being its key columns and a tuple pointer.
--
-- transactions_client_created_at_ms: a `transact` client's own transactions,
-- `WHERE client = $1 AND (created_at_ms, gateway_ref) < ($2, $3) ORDER BY
-- created_at_ms DESC, gateway_ref DESC` (the reference, unique across
-- clients, breaks ties); `from`/`to` narrow the same range; `status`
-- and `accountId` filter the rows it reads.
CREATE INDEX IF NOT EXISTS transactions_client_created_at_ms
    ON transactions (client, created_at_ms, gateway_ref);
-- transactions_created_at_ms: the same for an auditor, across every client.
CREATE INDEX IF NOT EXISTS transactions_created_at_ms ON transactions (created_at_ms, gateway_ref);
--
-- An account's statement, `WHERE account_id = $1 AND id < $2 ORDER BY id
-- DESC`: (account_id, id) replaces (account_id), which served nothing else
-- (the batches never read postings). Same number of entries per commit (two
-- postings, one entry each), each 8 bytes wider.
CREATE INDEX IF NOT EXISTS postings_account_id_id ON postings (account_id, id);
DROP INDEX IF EXISTS postings_account_id;
