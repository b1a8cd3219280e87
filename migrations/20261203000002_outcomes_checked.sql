-- The outcome check of the previous migration, validated on the existing rows: VALIDATE takes a
-- lock that lets writes go on while it scans.
ALTER TABLE operation_runs VALIDATE CONSTRAINT operation_runs_outcome_check;
