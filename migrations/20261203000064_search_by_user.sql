-- no-transaction
-- The viewer's search (see 20261203000060_search_by_context.sql): completed runs only.
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_completed_user_idx
    ON operation_runs (workspace_id, user_id, created_at) WHERE status = 'completed';
