-- Job hand-off retries (issue 9, defect 1). A job the broker nacks (an executor queue that
-- rejects publishes) is retried with backoff: `attempts` counts the nacked publishes and
-- `next_attempt_at` holds it back until its delay has passed (NULL: due at once). After the
-- relay's bound (--job-publish-attempts) the run is failed with `dispatch.rejected` and the job
-- is stamped published_at (settled). `last_error` is what the broker said last, for operators.
ALTER TABLE operation_run_jobs
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN last_error      text;
