-- Postings lose their index by transaction. Nothing reads postings by
-- transaction (the ledger only writes them; the planned account history,
-- `GET /v1/accounts/{id}/postings`, reads them by account, and keeps
-- `postings_account_id`), and every commit paid for two entries in it: the
-- largest of the postings' indexes (text keys), written in the finish
-- batch's statement. The SQLite schema keeps it: in-process, it costs no
-- WAL and no server CPU.
DROP INDEX postings_transaction_id;
