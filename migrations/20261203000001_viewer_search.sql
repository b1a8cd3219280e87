-- The viewer's search filters (docs/viewer.md, GET /v1/runs): context keys, failure codes, the
-- initiator, the user, the identity, the last change. Every index here holds completed runs
-- only (`WHERE status = 'completed'`): a progress update of a queued or running run never
-- satisfies the predicate, so it adds no entry to any of them (an update of operation_runs is
-- never HOT: every index whose predicate holds gets an entry for the new row version). A run
-- enters them once, when it completes. The list reads active runs apart, from
-- operation_runs_active_updated_idx (active runs are few: the reaper scans them the same way).
CREATE INDEX operation_runs_completed_context_idx
    ON operation_runs USING gin (context jsonb_path_ops) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_failures_idx
    ON operation_runs USING gin (failure_summary jsonb_path_ops) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_overflow_idx
    ON operation_runs USING gin (failure_overflow) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_initiator_idx
    ON operation_runs (workspace_id, lower(initiator_name), created_at) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_user_idx
    ON operation_runs (workspace_id, user_id, created_at) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_identity_idx
    ON operation_runs (run_identity_hash, created_at) WHERE status = 'completed';
CREATE INDEX operation_runs_completed_updated_idx
    ON operation_runs (workspace_id, updated_at) WHERE status = 'completed';
