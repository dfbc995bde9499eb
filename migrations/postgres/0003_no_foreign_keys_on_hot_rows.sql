-- Postings and attempts lose their foreign keys, as transactions never had
-- one to accounts. Each key cost a `SELECT … FOR KEY SHARE` of the referenced
-- row per inserted row; the referenced rows here are the hottest in the
-- ledger (an account and its settlement account are updated by every batch,
-- a transaction row in the same statement), and the checks were the largest
-- single cost of a batch (~150 µs of server CPU per posting under load).
-- What the keys guarded still holds by construction: postings and attempts
-- are written only by the ledger, in the database transaction that holds the
-- lock on (or has just inserted) every row they name, and rows are never
-- deleted. The SQLite schema keeps its keys: in-process, they cost no lock
-- traffic.
ALTER TABLE postings DROP CONSTRAINT postings_transaction_id_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_account_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_transaction_id_fkey;
