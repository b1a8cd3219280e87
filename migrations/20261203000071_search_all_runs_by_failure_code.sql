-- no-transaction
-- The viewer's search over every run (see 20261203000070_search_all_runs_by_context.sql): the
-- codes of a run's stored failures, as a JSON array. Over every run, not only those with
-- failures: PostgreSQL keeps statistics of an index's expression only for an index without a
-- predicate, and with them it knows a code on 4 % of the runs from one on none, and walks the
-- newest-first index for the first and reads this one for the second.
-- CONCURRENTLY, so a large table keeps taking writes while it is built (PostgreSQL runs it only
-- as the one statement of a file outside a transaction); a failed build leaves an invalid index:
-- drop it concurrently and start the service again (docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS operation_runs_failure_codes_idx
    ON operation_runs USING gin ((jsonb_path_query_array(failure_summary, '$[*].code')));
