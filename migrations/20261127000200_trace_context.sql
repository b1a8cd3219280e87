-- W3C trace context of the command that dispatched a run (issue 12): stamped on the run's job
-- message and on its events (CloudEvents distributed-tracing extension). Nullable: runs created
-- before this migration have none. Validated by the service before it is stored
-- (src/domain/trace_context.rs): traceparent is the 55-character version-00 form, tracestate at
-- most 512 printable ASCII bytes.
ALTER TABLE operation_runs
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text,
    ADD CONSTRAINT operation_runs_traceparent_form
        CHECK (traceparent IS NULL OR traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'),
    ADD CONSTRAINT operation_runs_tracestate_size
        CHECK (tracestate IS NULL OR (traceparent IS NOT NULL AND octet_length(tracestate) <= 512));
