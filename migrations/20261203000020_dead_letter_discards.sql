-- Dead letters an operator can work with: the tenant a letter's body names (`oprun dlq summary`
-- counts by it), and the record of every discarded letter, written in the transaction that
-- deletes it (`oprun dlq discard`).

-- The body's `tenant_id` when it is a whole number; NULL for a workspace-scoped command and for
-- a body that is not JSON (`oprun dlq` fills it when it takes a letter from the queue).
ALTER TABLE dead_letters ADD COLUMN tenant_id bigint;

-- Letters stored before this column: read each body once, and leave NULL what does not parse.
DO $$
DECLARE
    letter record;
BEGIN
    FOR letter IN SELECT id, body FROM dead_letters LOOP
        BEGIN
            UPDATE dead_letters
               SET tenant_id = (convert_from(letter.body, 'UTF8')::jsonb ->> 'tenant_id')::bigint
             WHERE id = letter.id;
        EXCEPTION WHEN others THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- One row per discarded letter: who, when, and enough to recognise it (its code, kind, command
-- id, tenant, age and the SHA-256 of its body); the body itself is gone. Kept: an audit record,
-- one short row per letter, never pruned.
CREATE TABLE dead_letter_discards (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The letter's id in dead_letters (that row is deleted in the same transaction).
    letter_id       bigint      NOT NULL,
    code            text        NOT NULL,
    kind            text,
    command_id      text,
    tenant_id       bigint,
    routing_key     text        NOT NULL,
    first_failed_at timestamptz,
    -- Lowercase hex SHA-256 of the body, and its size.
    body_sha256     text        NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    body_bytes      integer     NOT NULL,
    -- `oprun dlq discard --initiator` (default the OS user).
    discarded_by    text,
    discarded_at    timestamptz NOT NULL DEFAULT now()
);
