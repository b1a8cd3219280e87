-- no-transaction
-- Replaced by operation_runs_failure_codes_idx, which holds active runs too (decision 0092).
-- CONCURRENTLY, so the table keeps taking writes while it goes.
DROP INDEX CONCURRENTLY IF EXISTS operation_runs_completed_failures_idx;
