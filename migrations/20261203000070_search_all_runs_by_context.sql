-- no-transaction
-- The viewer's search filters read one index each, for active and completed runs alike
-- (decision 0092): the completed-only indexes of 20261203000060–65 left the active runs to a
-- scan of every active run of the workspace, which at 30,000 active runs cost 250–360 ms a list.
-- None of these indexes holds a column a progress update changes (summary counts, updated_at),
-- so a progress update stays HOT (decision 0066); context, initiator, user and identity never
-- change after a dispatch, and the failure summary only on append_failures. The cost is the
-- dispatch's and the start's entries in them (docs/performance.md, "Every write").
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_context_idx
    ON operation_runs USING gin (context jsonb_path_ops);
