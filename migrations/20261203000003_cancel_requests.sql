-- no-transaction
-- The reaper's scan of unanswered cancel requests: only runs with a pending request.
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_cancel_requested_idx
    ON operation_runs (cancel_requested_at)
    WHERE cancel_requested_at IS NOT NULL AND status = 'running';
