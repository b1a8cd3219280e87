-- The event outbox becomes a narrow table of its own (issue 13). An event row is written once,
-- in the transaction of its change, and never rewritten: "published" is the absence of its
-- position here. Before, the relay stamped published_at on the wide row, a non-HOT update
-- (the partial index on published_at forbade HOT) that copied every event once more.
-- Measured on 200,000 events of ~1 kB, batches of 500 (see docs/decisions.md): stamping
-- published_at 2.6 s and 200 MB of WAL; a HOT update with fillfactor 70 and no index on it
-- 1.6 s, 153 MB; inserting and deleting outbox positions 0.43 s, 47 MB.
--
-- No foreign key to operation_run_events: its check would lock (and dirty) the event row just
-- written. Rows are only deleted here by the relay after the broker's confirm; retention never
-- deletes an event, or a run, whose position is still here.
CREATE TABLE operation_run_event_outbox (
    position bigint PRIMARY KEY
);
INSERT INTO operation_run_event_outbox (position)
SELECT position FROM operation_run_events WHERE published_at IS NULL;
DROP INDEX operation_run_events_unpublished_idx;
ALTER TABLE operation_run_events DROP COLUMN published_at;

-- A queue table: every published event leaves a dead row. Vacuum it after every 1,000 of them,
-- whatever its size (the default waits for 20 % of the table to be dead). `serve`'s pruner also
-- vacuums it every --prune-interval, for databases where autovacuum is off.
ALTER TABLE operation_run_event_outbox
    SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
