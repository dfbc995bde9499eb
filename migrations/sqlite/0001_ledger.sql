-- The ledger. Same shape as migrations/postgres/0001_ledger.sql (see the
-- comments there): timestamps are unix milliseconds, JSON is stored as text.
-- STRICT tables, so a value of the wrong type is an error, as on Postgres.
-- Rows are never deleted.

CREATE TABLE accounts (
    id            TEXT    NOT NULL PRIMARY KEY,
    owner         TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('customer', 'settlement')),
    balance       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    CONSTRAINT accounts_customer_balance_non_negative
        CHECK (kind = 'settlement' OR balance >= 0)
) STRICT;

CREATE TABLE transactions (
    id               TEXT    NOT NULL PRIMARY KEY,
    client           TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('debit', 'credit', 'transfer')),
    source           TEXT,
    destination      TEXT,
    amount           INTEGER NOT NULL CHECK (amount > 0),
    currency         TEXT    NOT NULL,
    metadata         TEXT,
    fingerprint      TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('reserved', 'pending', 'committed', 'declined', 'failed')),
    reason           TEXT,
    switch           TEXT,
    switch_reference TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    requeries        INTEGER NOT NULL DEFAULT 0 CHECK (requeries >= 0),
    last_error       TEXT,
    lease_until_ms   INTEGER,
    response_status  INTEGER,
    response_body    TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    CONSTRAINT transactions_accounts_match_kind CHECK (
        (kind = 'debit' AND source IS NOT NULL AND destination IS NULL)
        OR (kind = 'credit' AND source IS NULL AND destination IS NOT NULL)
        OR (kind = 'transfer' AND source IS NOT NULL AND destination IS NOT NULL)
    ),
    CONSTRAINT transactions_final_has_response CHECK (
        (status IN ('committed', 'declined', 'failed'))
        = (response_status IS NOT NULL AND response_body IS NOT NULL)
    )
) STRICT;

CREATE INDEX transactions_status_updated_at_ms ON transactions (status, updated_at_ms);

CREATE TABLE postings (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT    REFERENCES transactions (id),
    account_id     TEXT    NOT NULL REFERENCES accounts (id),
    amount         INTEGER NOT NULL CHECK (amount <> 0),
    created_at_ms  INTEGER NOT NULL
) STRICT;

CREATE INDEX postings_account_id ON postings (account_id);
CREATE INDEX postings_transaction_id ON postings (transaction_id);

CREATE TABLE attempts (
    transaction_id TEXT    NOT NULL REFERENCES transactions (id),
    attempt_no     INTEGER NOT NULL CHECK (attempt_no > 0),
    switch         TEXT    NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    outcome        TEXT,
    error          TEXT,
    PRIMARY KEY (transaction_id, attempt_no)
) STRICT;
