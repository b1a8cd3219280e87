-- Dedupe window per operation type (issue 9, item 3). The catalog says how long a run's identity
-- stays taken: 'active' (while queued or running, the original rule) or 'forever' (at most one
-- run per identity, ever). The service stores the window of the run's type in the row, so the
-- unique indexes below carry one generic predicate instead of a list of types that would need a
-- migration whenever the catalog changes.
ALTER TABLE operation_runs
    ADD COLUMN dedupe_window text NOT NULL DEFAULT 'active',
    ADD CONSTRAINT operation_runs_dedupe_window_check CHECK (dedupe_window IN ('active', 'forever'));

-- Existing scheduled fires: the first run of each identity becomes its forever holder. Later
-- duplicates that history may already contain keep 'active', so this index can always be built.
UPDATE operation_runs SET dedupe_window = 'forever'
WHERE id IN (SELECT min(id) FROM operation_runs
             WHERE type = 'backup_schedule.scheduled'
             GROUP BY workspace_id, tenant_id, run_identity_hash);

-- At most one run ever per identity whose window is 'forever', in each scope (the tenant one and
-- the workspace one, like the active indexes). The dispatch path inserts with ON CONFLICT on these.
CREATE UNIQUE INDEX operation_runs_forever_tenant_identity_idx
    ON operation_runs (tenant_id, run_identity_hash)
    WHERE tenant_id IS NOT NULL AND dedupe_window = 'forever';
CREATE UNIQUE INDEX operation_runs_forever_workspace_identity_idx
    ON operation_runs (workspace_id, run_identity_hash)
    WHERE tenant_id IS NULL AND dedupe_window = 'forever';
