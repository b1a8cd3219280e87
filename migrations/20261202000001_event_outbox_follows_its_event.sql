-- An outbox position never outlives its event: deleting an event whose position is still in
-- operation_run_event_outbox (an event not yet published) fails, whoever deletes it (the
-- pruner, a cascade from its run, an operator). Before, run retention could delete a run while a
-- late count committed an event on it: the cascade took the new event, its position stayed, and
-- the relay stopped on it for ever.
--
-- A statement-level check on the deleting side, not a foreign key from the outbox: the key's
-- check on every outbox insert locks (and dirties) the event row just written; measured on
-- 100,000 events written as the service does (200 per statement): 1.34-1.55 s without, 1.66-1.89 s
-- with the key (+25 % on that statement) and +4 % WAL. This costs nothing on the write path and
-- the relay: it runs only when events are deleted (pruning), once per statement. It refuses
-- rather than cascades: a deletion that would lose an unpublished event is an error, never a
-- silent loss (the pruner logs it and tries again at its next pass, once the relay published it).
--
-- Online on any outbox: nothing is scanned or rewritten; CREATE TRIGGER takes a SHARE ROW
-- EXCLUSIVE lock on operation_run_events for an instant (event inserts wait that long).
-- Positions already orphaned by the old pruner are skipped by the relay, which deletes them and
-- counts them (oprun_relay_orphan_positions_total).
CREATE FUNCTION operation_run_events_keep_unpublished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gone g JOIN operation_run_event_outbox o ON o.position = g.position) THEN
        RAISE EXCEPTION 'an event still in the outbox (not yet published) cannot be deleted'
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'wait for the relay to publish it, or delete its position from operation_run_event_outbox first';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER operation_run_events_keep_unpublished
    AFTER DELETE ON operation_run_events
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION operation_run_events_keep_unpublished();
