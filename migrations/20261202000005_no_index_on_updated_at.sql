-- no-transaction
-- The reaper's index on updated_at made every progress update write an entry into each index
-- of operation_runs; the reaper reads operation_runs_active_idx instead.
DROP INDEX CONCURRENTLY IF EXISTS operation_runs_active_updated_idx;
