-- no-transaction
-- Which run answered a deduplicated dispatch (the run page's "Runs of this identity"): the
-- inbox already records it, as the dispatch's `run_id` with `"deduplicated": true` in its
-- result. A partial index holds those rows alone: other inbox rows (every progress command, every
-- dispatch that created its run) only evaluate the predicate and add no index entry, so the
-- command path writes one more index entry per deduplicated dispatch and nothing else.
-- CONCURRENTLY, so a large inbox keeps taking writes while it is built (alone in this file, outside
-- a transaction; docs/operations.md, "Migrations").
CREATE INDEX CONCURRENTLY IF NOT EXISTS processed_commands_deduplicated_idx
    ON processed_commands (run_id, processed_at)
    WHERE kind = 'dispatch' AND (result ->> 'deduplicated') = 'true';
