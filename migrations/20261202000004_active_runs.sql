-- no-transaction
-- Progress updates become HOT updates (a new version on the same page, no index entry written):
-- no index may hold a column that a progress update changes (summary counts, failures,
-- updated_at). The stale-run reaper and the active-runs gauge read the few active runs through
-- this index, keyed on what progress never changes, and check updated_at on the rows; the next
-- migration drops the reaper's old index on updated_at. Keyed on id, which follows the rows'
-- order in the table, so a scan of every active run reads the heap in order and the planner
-- prefers it to a sequential scan (the tenant quota's count of active runs uses it too).
--
-- CONCURRENTLY, so a large table keeps taking writes while it is built; PostgreSQL runs it only
-- as the one statement of a file outside a transaction. If it fails it leaves an invalid index:
-- `DROP INDEX CONCURRENTLY operation_runs_active_idx` and start the service again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_active_idx
    ON operation_runs (id)
    WHERE status IN ('queued', 'running');
