-- no-transaction
-- The viewer's search over every run (see 20261203000070_search_all_runs_by_context.sql).
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_overflow_idx
    ON operation_runs USING gin (failure_overflow)
    WHERE failure_overflow <> '{}'::jsonb;
