-- Least-privileged database roles of operation-runs (README, Security: "Database roles").
--
--   oprun_owner    owns the schema's tables and functions; runs `oprun migrate` (and the other
--                  operator commands: `oprun dlq`, `oprun prune`); makes the viewer's secret.
--   oprun_service  what `oprun serve` needs and nothing more: reads the reference and legacy
--                  tables, writes the tables the pipeline writes, only reads `api_secrets` (no
--                  INSERT, UPDATE or DELETE there), no DDL. `oprun token` works with it too.
--   oprun_reader   read-only dashboards and ad-hoc queries: SELECT on every table except
--                  `api_secrets`.
--
-- Who can read the API secret afterwards: superusers, oprun_owner, oprun_service, members of
-- those roles, and members of PostgreSQL's pg_read_all_data (never grant it to dashboards).
--
-- Run it in the service's database (its own database: it revokes CREATE on schema public from
-- PUBLIC) as a superuser, after `oprun migrate`, and again after every upgrade's migrations
-- (it is idempotent, and refuses to finish while a table is not named below):
--
--   oprun migrate                                 # any role that may create the tables
--   psql -v ON_ERROR_STOP=1 -d oprun -f ops/postgres/roles.sql
--
-- Other names: set them in the same session first, e.g.
--   psql -v ON_ERROR_STOP=1 -d oprun -c "SET oprun.service_role = 'oprun_prod_service'" -f ops/postgres/roles.sql
-- (oprun.owner_role, oprun.service_role, oprun.reader_role; empty or unset: the names above).
--
-- The roles are created LOGIN without a password: give each one (ALTER ROLE … PASSWORD …) or
-- map them in pg_hba.conf. Tables and functions of whoever migrated so far (the owner of
-- _sqlx_migrations) are handed to oprun_owner.

DO $roles$
DECLARE
    owner_role   text := coalesce(nullif(current_setting('oprun.owner_role', true), ''), 'oprun_owner');
    service_role text := coalesce(nullif(current_setting('oprun.service_role', true), ''), 'oprun_service');
    reader_role  text := coalesce(nullif(current_setting('oprun.reader_role', true), ''), 'oprun_reader');
    role_name      text;
    previous_owner name;
    t              record;
BEGIN
    FOREACH role_name IN ARRAY ARRAY[owner_role, service_role, reader_role] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', role_name);
        END IF;
    END LOOP;

    -- The owner: every table and function of whoever migrated so far, and the schema's CREATE
    -- (the migrations' DDL). Nobody else may create objects in the schema.
    SELECT tableowner INTO previous_owner FROM pg_tables
     WHERE schemaname = 'public' AND tablename = '_sqlx_migrations';
    IF previous_owner IS NOT NULL AND previous_owner <> owner_role THEN
        FOR t IN SELECT c.relname FROM pg_class c
                  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
                    AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = previous_owner)
        LOOP
            EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.relname, owner_role);
        END LOOP;
        FOR t IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                  WHERE p.pronamespace = 'public'::regnamespace
                    AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = previous_owner)
        LOOP
            EXECUTE format('ALTER FUNCTION %s OWNER TO %I', t.signature, owner_role);
        END LOOP;
    END IF;
    EXECUTE 'REVOKE CREATE ON SCHEMA public FROM PUBLIC';
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA public TO %I', owner_role);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I, %I', service_role, reader_role);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I',
                   current_database(), owner_role, service_role, reader_role);

    -- From scratch each time: what is granted is exactly what this file says.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, %I, %I',
                   service_role, reader_role);

    -- Every table of the schema, and what `oprun serve` does with it. A table missing here
    -- stops the script: a new migration's table gets its grants decided, never by default.
    FOR t IN SELECT * FROM (VALUES
        -- reference data and the platform's tables: read
        ('workspaces',                 'SELECT'),
        ('tenants',                    'SELECT'),
        ('users',                      'SELECT'),
        ('restore_runs',               'SELECT'),
        ('inventory_sync_runs',        'SELECT'),
        ('entra_group_sync_runs',      'SELECT'),
        -- a legacy row is linked to the run that replaces it (one column)
        ('backup_schedule_runs',       'SELECT, UPDATE (operation_run_id)'),
        -- the pipeline: runs, their events and the outbox, jobs, the inbox (the pruner deletes)
        ('operation_runs',             'SELECT, INSERT, UPDATE, DELETE'),
        ('operation_run_events',       'SELECT, INSERT, DELETE'),
        ('operation_run_event_outbox', 'SELECT, INSERT, DELETE'),
        ('operation_run_jobs',         'SELECT, INSERT, UPDATE, DELETE'),
        ('processed_commands',         'SELECT, INSERT, DELETE'),
        -- operator actions recorded with their effect (the pruner's cascade deletes them)
        ('operation_run_actions',      'SELECT, INSERT, DELETE'),
        -- the settings serve records (retention, read by `oprun dlq replay`)
        ('service_settings',           'SELECT, INSERT, UPDATE'),
        -- counted for the dead-letter gauge; written by `oprun dlq` (the owner) and by the
        -- viewer's dead-letters page (taken from the queue, locked and deleted by a replay,
        -- deleted by a discard)
        ('dead_letters',               'SELECT, INSERT, UPDATE, DELETE'),
        -- the record of discarded dead letters, written by `oprun dlq discard` and the page
        ('dead_letter_discards',       'SELECT, INSERT'),
        -- the viewer's signing secret: read, never written (`oprun migrate` makes it)
        ('api_secrets',                'SELECT'),
        -- `serve` checks the database is migrated
        ('_sqlx_migrations',           'SELECT')
    ) AS g(name, privileges)
    LOOP
        IF to_regclass(format('public.%I', t.name)) IS NULL THEN
            RAISE EXCEPTION 'roles.sql names table % but the database has none: run it after oprun migrate', t.name;
        END IF;
        EXECUTE format('GRANT %s ON public.%I TO %I', t.privileges, t.name, service_role);
        IF t.name <> 'api_secrets' THEN
            EXECUTE format('GRANT SELECT ON public.%I TO %I', t.name, reader_role);
        END IF;
    END LOOP;

    FOR t IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
                AND NOT has_table_privilege(service_role, c.oid, 'SELECT')
    LOOP
        RAISE EXCEPTION 'table % is not named in ops/postgres/roles.sql: decide what each role may do with it', t.relname;
    END LOOP;
END
$roles$;
