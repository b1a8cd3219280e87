-- Dead letters, moved out of `N.commands.dlq` so that reading them changes nothing. Any
-- `oprun dlq` command first takes what the queue holds (one delivery each), inserts it here and
-- acks it only after the commit; `list` and `replay` then read this table. Reading a quorum
-- queue in place is not possible without returning messages, and every return counts as a
-- delivery (3.x: x-delivery-count; 4.0-4.2: the acquired count the default limit of 20 is
-- checked against), reorders them, and would eventually drop them.
--
-- Columns are what an operator filters and sorts on; `body` and `properties` (lapin's
-- BasicProperties as serde JSON, headers included) are the message as it was, for replay.
CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL,
    message text NOT NULL,
    kind text,
    command_id text,
    routing_key text NOT NULL,
    -- x-oprun-first-failed-at (kept across replays), else failed_at: the letter's age.
    first_failed_at timestamptz,
    -- x-oprun-failed-at, else the broker's x-death time: this letter's refusal.
    failed_at timestamptz,
    replays bigint NOT NULL DEFAULT 0,
    -- x-delivery-count (or x-acquired-count) when it was taken from the queue.
    delivery_count bigint NOT NULL DEFAULT 0,
    body bytea NOT NULL,
    properties bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_code_idx ON dead_letters (code, id);
