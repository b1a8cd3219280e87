-- no-transaction
-- The viewer's search over every run (see 20261203000070_search_all_runs_by_context.sql).
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
-- Runs with failures only (most runs have none): the list's predicate names the condition.
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_failures_idx
    ON operation_runs USING gin (failure_summary jsonb_path_ops)
    WHERE failure_summary <> '[]'::jsonb;
