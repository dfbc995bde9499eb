-- Fenced reconciler leases (same as migrations/sqlite/0006_lease_token.sql): a
-- claim stamps its holder's token with the lease; a holder whose lease ran
-- out and was claimed again finds another token and may not commit or release.
ALTER TABLE transactions ADD COLUMN lease_token TEXT;
