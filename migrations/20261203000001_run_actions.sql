-- Operator actions on runs: the outcome `cancelled`, the cancel request of a running run, and
-- the record of every action. The indexes on operation_runs follow, each built concurrently.

ALTER TABLE operation_runs DROP CONSTRAINT operation_runs_outcome_check;
-- NOT VALID: a new row is checked at once, the existing rows by the next migration, which scans
-- the table without holding back writes (ADD CONSTRAINT would scan it under an exclusive lock).
ALTER TABLE operation_runs ADD CONSTRAINT operation_runs_outcome_check
    CHECK (outcome IN ('pending', 'succeeded', 'partially_succeeded', 'failed', 'blocked', 'cancelled'))
    NOT VALID;

-- When an actor asked the running run's executor to stop; the reaper completes the run
-- `cancelled` (run.cancel_timeout) when no answer came within the type's expected duration.
ALTER TABLE operation_runs ADD COLUMN cancel_requested_at timestamptz;

-- Every action, written in the transaction of its effect.
CREATE TABLE operation_run_actions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         bigint      NOT NULL REFERENCES operation_runs (id) ON DELETE CASCADE,
    action         text        NOT NULL CHECK (action IN ('cancel', 'retry', 'fail')),
    -- Who: the CLI's --initiator (default the OS user), a broker command's initiator_name.
    actor_name     text,
    actor_user_id  bigint,
    -- Where the action came from: 'cli' or 'broker'.
    via            text        NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    reason         text,
    result         text        NOT NULL CHECK (result IN ('done', 'requested', 'unchanged', 'refused')),
    -- The run a retry dispatched (or found holding the identity).
    new_run_id     bigint,
    error          text,
    -- The bulk action this one was part of, if any.
    bulk_id        text,
    -- The broker command that asked for it, if any.
    command_id     text
);
CREATE INDEX operation_run_actions_run_idx ON operation_run_actions (run_id, id);
-- A bulk retry run again with the same bulk id retries each run once.
CREATE UNIQUE INDEX operation_run_actions_bulk_once_idx
    ON operation_run_actions (bulk_id, run_id, action)
    WHERE bulk_id IS NOT NULL AND result IN ('done', 'requested');

-- A run's job outbox now holds its job and, after a cancel request, its cancel message
-- (type `cancel.<type>`): one of each per run.
ALTER TABLE operation_run_jobs DROP CONSTRAINT operation_run_jobs_run_id_key;
ALTER TABLE operation_run_jobs ADD CONSTRAINT operation_run_jobs_run_id_type_key UNIQUE (run_id, type);
