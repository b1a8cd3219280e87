-- Minimal reference tables, so that the foreign keys of operation_runs are real.
-- The platform owns the full versions; this service only needs ids and names.

CREATE TABLE workspaces (
    id   bigint PRIMARY KEY,
    name text   NOT NULL
);

CREATE TABLE tenants (
    id           bigint PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces (id),
    name         text   NOT NULL,
    -- Target of the composite foreign key that keeps a run's tenant inside the run's workspace.
    UNIQUE (id, workspace_id)
);

CREATE TABLE users (
    id   bigint PRIMARY KEY,
    name text   NOT NULL
);
