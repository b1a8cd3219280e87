-- no-transaction
-- Every event wrote an entry into this index, and only retention read it: the pruner now walks
-- the events in windows of positions (positions follow recording, like the jobs' pass), and
-- `oprun events replay --since` pages by position, filtering on created_at. Dropped
-- CONCURRENTLY, so writers are never blocked (it waits for the transactions using the index,
-- then removes it); PostgreSQL runs it only as the one statement of a file outside a
-- transaction. 0.11 s on 6,000,000 events (2.1 GB; the index 150 MB), a writer inserting
-- meanwhile (decision 0081).
DROP INDEX CONCURRENTLY IF EXISTS operation_run_events_created_idx;
