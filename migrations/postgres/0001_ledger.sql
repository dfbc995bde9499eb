-- The ledger. Same shape as migrations/sqlite/0001_ledger.sql: timestamps are
-- unix milliseconds (BIGINT), JSON is stored as text, so both backends share
-- one set of queries. Rows are never deleted.
--
-- Within what CockroachDB and YugabyteDB accept: no advisory locks in the
-- ledger's own SQL, no PL/pgSQL, no triggers.

CREATE TABLE accounts (
    id            TEXT   PRIMARY KEY,
    owner         TEXT   NOT NULL,
    currency      TEXT   NOT NULL,
    -- settlement: the per-switch settlement accounts and the per-currency
    -- equity account, owned by 'system'; they stand for money outside the
    -- ledger and may go negative.
    kind          TEXT   NOT NULL CHECK (kind IN ('customer', 'settlement')),
    balance       BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CONSTRAINT accounts_customer_balance_non_negative
        CHECK (kind = 'settlement' OR balance >= 0)
);

CREATE TABLE transactions (
    -- The client's transactionId: the idempotency key.
    id               TEXT   PRIMARY KEY,
    client           TEXT   NOT NULL,
    kind             TEXT   NOT NULL CHECK (kind IN ('debit', 'credit', 'transfer')),
    -- No foreign keys to accounts: reserve inserts this row before it checks
    -- the accounts (the insert is the idempotency check), and the check's
    -- KEY SHARE lock on a hot account row would only add contention.
    source           TEXT,
    destination      TEXT,
    amount           BIGINT NOT NULL CHECK (amount > 0),
    currency         TEXT   NOT NULL,
    metadata         TEXT,
    -- Digest of the payload: a replay with another payload is told apart.
    fingerprint      TEXT   NOT NULL,
    status           TEXT   NOT NULL
        CHECK (status IN ('reserved', 'pending', 'committed', 'declined', 'failed')),
    reason           TEXT,
    switch           TEXT,
    switch_reference TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    requeries        BIGINT NOT NULL DEFAULT 0 CHECK (requeries >= 0),
    last_error       TEXT,
    -- Reconciler lease: a claimer owns the row until then.
    lease_until_ms   BIGINT,
    -- The answer replays get, stored with the final status.
    response_status  BIGINT,
    response_body    TEXT,
    created_at_ms    BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL,
    CONSTRAINT transactions_accounts_match_kind CHECK (
        (kind = 'debit' AND source IS NOT NULL AND destination IS NULL)
        OR (kind = 'credit' AND source IS NULL AND destination IS NOT NULL)
        OR (kind = 'transfer' AND source IS NOT NULL AND destination IS NOT NULL)
    ),
    CONSTRAINT transactions_final_has_response CHECK (
        (status IN ('committed', 'declined', 'failed'))
        = (response_status IS NOT NULL AND response_body IS NOT NULL)
    )
);

-- The reconciler scans in-flight rows by age.
CREATE INDEX transactions_status_updated_at_ms ON transactions (status, updated_at_ms);

-- Double entry: every set of postings sums to zero. Written when a movement
-- completes (commit, account opening); a reservation is a hold on the balance,
-- not a posting, so balance = sum(postings) - held amounts.
CREATE TABLE postings (
    id             BIGSERIAL PRIMARY KEY,
    -- NULL for an opening balance (equity -> new account).
    transaction_id TEXT   REFERENCES transactions (id),
    account_id     TEXT   NOT NULL REFERENCES accounts (id),
    amount         BIGINT NOT NULL CHECK (amount <> 0),
    created_at_ms  BIGINT NOT NULL
);

CREATE INDEX postings_account_id ON postings (account_id);
CREATE INDEX postings_transaction_id ON postings (transaction_id);

-- Write-ahead: a row here is stored before the request leaves the gateway.
CREATE TABLE attempts (
    transaction_id TEXT   NOT NULL REFERENCES transactions (id),
    attempt_no     BIGINT NOT NULL CHECK (attempt_no > 0),
    switch         TEXT   NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    outcome        TEXT,
    error          TEXT,
    PRIMARY KEY (transaction_id, attempt_no)
);
