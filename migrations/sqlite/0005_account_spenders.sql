-- Shared accounts (same as migrations/postgres/0005_account_spenders.sql): the
-- clients besides the owner that may spend from an account, as a JSON array
-- of client ids (["*"]: any client); NULL: the owner alone. Read with the
-- account row by the same locking reads as its balance, so the check and the
-- debit stay one atomic, guarded step.
ALTER TABLE accounts ADD COLUMN spenders TEXT;
