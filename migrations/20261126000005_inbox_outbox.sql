-- The inbox: every applied command id, written in the same transaction as its effect, so a
-- redelivered command has no second effect. body_hash (SHA-256 of the body's canonical JSON)
-- tells a redelivery (same hash) from a reused id (other hash: command_id_conflict).
CREATE TABLE processed_commands (
    command_id   text        PRIMARY KEY,
    kind         text        NOT NULL,
    body_hash    text        NOT NULL,
    run_id       bigint,
    -- What the command produced: replayed as the reply when the command is redelivered.
    result       jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_commands_processed_at_idx ON processed_commands (processed_at);

-- The event outbox and history. Written in the transaction of the state change; the relay
-- publishes unpublished rows in position order (which is per-run sequence order) and stamps
-- published_at after the broker confirms.
CREATE TABLE operation_run_events (
    position     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           uuid        NOT NULL UNIQUE,
    run_id       bigint      NOT NULL REFERENCES operation_runs (id) ON DELETE CASCADE,
    -- 1, 2, 3, ... per run, no gaps.
    sequence     bigint      NOT NULL CHECK (sequence >= 1),
    type         text        NOT NULL,
    workspace_id bigint      NOT NULL,
    tenant_id    bigint,
    -- The complete CloudEvents 1.0 document as published.
    cloud_event  jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    UNIQUE (run_id, sequence)
);
CREATE INDEX operation_run_events_unpublished_idx ON operation_run_events (position) WHERE published_at IS NULL;
CREATE INDEX operation_run_events_created_idx ON operation_run_events (created_at);

-- The job outbox: the hand-off of a new run's work to executors (exchange N.jobs).
CREATE TABLE operation_run_jobs (
    position     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       bigint      NOT NULL UNIQUE REFERENCES operation_runs (id) ON DELETE CASCADE,
    type         text        NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX operation_run_jobs_unpublished_idx ON operation_run_jobs (position) WHERE published_at IS NULL;
