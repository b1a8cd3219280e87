-- no-transaction
-- A run's retries (`oprun runs show`): a partial expression index on the retries alone, so the
-- lookup is an index probe however many runs there are, and costs nothing for other runs.
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_retry_of_idx
    ON operation_runs (((context ->> 'retry_of')))
    WHERE context ? 'retry_of';
