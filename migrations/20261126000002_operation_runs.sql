-- The canonical table: one row per operation run. Column and index names are a contract.

CREATE TABLE operation_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id      bigint      NOT NULL REFERENCES workspaces (id),
    -- NULL for a workspace-scoped run. The composite FK below keeps the tenant in the workspace.
    tenant_id         bigint,
    user_id           bigint      REFERENCES users (id),
    initiator_name    text,
    -- Wire name from the type catalog (e.g. 'inventory.sync'); validated by the service.
    type              text        NOT NULL,
    status            text        NOT NULL DEFAULT 'queued',
    outcome           text        NOT NULL DEFAULT 'pending',
    -- Lowercase hex SHA-256 of the JCS identity document (see README, "The identity rule").
    run_identity_hash text        NOT NULL,
    -- {key: non-negative integer}, keys from the summary count registry.
    summary_counts    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- [{code, message, reason_code?, item?}], messages sanitised before they get here.
    failure_summary   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- The dispatch context, identity values normalised (scheduled_for to its UTC minute).
    context           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at        timestamptz,
    completed_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Touched by every change; the stale-run reaper reads it as the last heartbeat.
    updated_at        timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT operation_runs_tenant_in_workspace
        FOREIGN KEY (tenant_id, workspace_id) REFERENCES tenants (id, workspace_id),
    CONSTRAINT operation_runs_status_check
        CHECK (status IN ('queued', 'running', 'completed')),
    CONSTRAINT operation_runs_outcome_check
        CHECK (outcome IN ('pending', 'succeeded', 'partially_succeeded', 'failed', 'blocked')),
    -- The outcome leaves 'pending' exactly when the run completes.
    CONSTRAINT operation_runs_completed_has_outcome
        CHECK ((status = 'completed') = (outcome <> 'pending')),
    CONSTRAINT operation_runs_identity_hash_check
        CHECK (run_identity_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT operation_runs_summary_counts_object
        CHECK (jsonb_typeof(summary_counts) = 'object'),
    CONSTRAINT operation_runs_failure_summary_array
        CHECK (jsonb_typeof(failure_summary) = 'array'),
    CONSTRAINT operation_runs_context_object
        CHECK (jsonb_typeof(context) = 'object')
);

-- Listing runs newest first, per workspace or tenant, optionally by type.
CREATE INDEX operation_runs_workspace_type_created_idx ON operation_runs (workspace_id, type, created_at);
CREATE INDEX operation_runs_workspace_created_idx ON operation_runs (workspace_id, created_at);
CREATE INDEX operation_runs_tenant_type_created_idx ON operation_runs (tenant_id, type, created_at);
CREATE INDEX operation_runs_tenant_created_idx ON operation_runs (tenant_id, created_at);

-- At most one active run per identity. Completion frees the identity. The dispatch path inserts
-- with ON CONFLICT on these, so concurrent consumers cannot create two active runs.
CREATE UNIQUE INDEX operation_runs_active_tenant_identity_idx
    ON operation_runs (tenant_id, run_identity_hash)
    WHERE tenant_id IS NOT NULL AND status IN ('queued', 'running');
CREATE UNIQUE INDEX operation_runs_active_workspace_identity_idx
    ON operation_runs (workspace_id, run_identity_hash)
    WHERE tenant_id IS NULL AND status IN ('queued', 'running');

-- The stale-run reaper scans active runs by last change.
CREATE INDEX operation_runs_active_updated_idx
    ON operation_runs (updated_at)
    WHERE status IN ('queued', 'running');
