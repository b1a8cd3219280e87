-- no-transaction
-- The viewer's search filters (docs/viewer.md, GET /v1/runs): context keys, failure codes, the
-- initiator, the user, the identity. Every index here holds completed runs only
-- (`WHERE status = 'completed'`), and none holds the summary counts or updated_at, which every
-- progress update changes, so a progress update stays a HOT update (decision 0066); an
-- append_failures changes the failure summary, which two of them hold, and writes their entries.
-- The list reads active runs apart, from operation_runs_active_idx (active runs are few: the
-- reaper scans them the same way). `updated_before` on completed runs is a filter on the
-- workspace's newest-first index, not an index of its own.
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_completed_context_idx
    ON operation_runs USING gin (context jsonb_path_ops) WHERE status = 'completed';
