-- The reconciler's scan (and the unfinished count) read only in-flight rows.
-- A partial index holds just those: a transaction leaves it when it becomes
-- final, instead of every final row staying indexed by status forever (one
-- index entry less written per finished transaction, and an index the size
-- of the work in flight rather than of the whole history).
DROP INDEX transactions_status_updated_at_ms;
CREATE INDEX transactions_in_flight_updated_at_ms ON transactions (updated_at_ms)
    WHERE status IN ('reserved', 'pending');
