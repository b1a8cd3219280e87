-- Settings `oprun serve` runs with that operator tools must agree with: each start records its
-- effective values here (one row per setting, the last start wins). `oprun dlq replay` reads
-- `inbox_retention` from here rather than assuming the default: a letter older than the
-- retention may have had its command id pruned from the inbox.
CREATE TABLE service_settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
