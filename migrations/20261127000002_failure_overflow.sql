-- Bounded failure summaries (issue 9, item 2). failure_summary keeps the first entries of a run,
-- up to a documented cap (README, "Failures"); every later entry is only counted here, per code:
-- {"<code>": n, …}, with codes past a cap counted under "*". Appending to a full summary changes
-- only this small object, never the stored entries.
ALTER TABLE operation_runs
    ADD COLUMN failure_overflow jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD CONSTRAINT operation_runs_failure_overflow_object CHECK (jsonb_typeof(failure_overflow) = 'object');
