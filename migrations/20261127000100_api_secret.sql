-- The run viewer's token signing secret: `oprun serve` (or `oprun token`) creates a random one
-- once when no --api-secret is configured, so a new user needs no set-up. Rotation: set
-- --api-secret, or delete the row and restart (every issued token becomes invalid).
CREATE TABLE api_secrets (
    name       text        PRIMARY KEY,
    secret     text        NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The viewer lists runs newest first with keyset paging on (created_at, id); these serve the
-- status and outcome filters of the list page inside a workspace or a tenant.
CREATE INDEX operation_runs_workspace_status_created_idx ON operation_runs (workspace_id, status, created_at);
CREATE INDEX operation_runs_workspace_outcome_created_idx ON operation_runs (workspace_id, outcome, created_at);
