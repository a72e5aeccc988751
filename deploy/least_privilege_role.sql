-- centrovision-sync: the least-privileged PostgreSQL role the service runs as.
--
-- Run as a PostgreSQL SUPERUSER, connected to the clinic database (the
-- [local_postgres] database of config.toml):
--
--   Linux:    sudo -u postgres psql -d centrovision -v sync_password='...' \
--                  -f /opt/centrovision-sync/least_privilege_role.sql
--   Windows:  psql -U postgres -d centrovision -v sync_password=... ^
--                  -f C:\CentroVision\sync-service\least_privilege_role.sql
--
-- Optional psql variables:
--   -v sync_password=...   required the first time (when the role does not
--                          exist yet); on later runs, omit it to keep the
--                          current password, or give it to change it.
--   -v sync_schema=...     schema of the synced tables ([local_postgres]
--                          schema), default public.
--   -v sync_tables=a,b,c   comma-separated table list ([sync] tables),
--                          default: the 23 CentroVision tables.
--
-- Idempotent: safe to run any number of times. Re-running it is also how to
--   * re-apply the grants after tables were added or re-created,
--   * remove the temporary SUPERUSER attribute given for `init` (see below),
--   * hand the control tables (_sync_*) to the role if someone else created
--     them.
--
-- The password is sent to the server in this script's ALTER/CREATE ROLE
-- statement (hashed there with password_encryption, scram-sha-256 by
-- default). If the server logs DDL (log_statement = 'ddl' or 'all') it lands
-- in the server log: omit sync_password and set it with psql's \password
-- centrovision_sync instead, which hashes on the client.
--
-- What the role can and cannot do
-- --------------------------------
-- The service (`run`, `once`) and `status`/`doctor` work with exactly the
-- privileges granted here (tests/it/deploy_files.rs runs the service as this
-- role). It is NOT a superuser, cannot create databases, roles or schemas,
-- cannot create objects in the schema, and has no privileges on tables other
-- than the synced ones and its own control tables.
--
-- One thing it cannot do: `centrovision-sync init` creates (or updates) the
-- publication with CREATE/ALTER PUBLICATION ... FOR TABLE, and PostgreSQL
-- only lets the OWNER of every listed table (or a superuser) do that; there
-- is no grantable privilege for it. The tables belong to the application, so
-- `init` must run with superuser rights, once at setup and again after an
-- upgrade or a change of [sync] tables:
--
--   ALTER ROLE centrovision_sync SUPERUSER;      -- as a superuser
--   centrovision-sync --config ... init          -- connects as centrovision_sync
--   (re-run this script)                         -- sets NOSUPERUSER again
--
-- Running `init` as the role itself (rather than with a superuser's own
-- credentials) makes the role the owner of what init creates (the control
-- tables and the publication) and of nothing else. Do not skip the last step:
-- `\du centrovision_sync` must not show Superuser.
--
-- Note on REPLICATION: it is needed to stream the logical replication slot,
-- and PostgreSQL has nothing finer-grained. A REPLICATION role can also copy
-- the whole cluster (every database) with BASE_BACKUP over the same kind of
-- connection the service uses, whatever pg_hba.conf says about `replication`
-- (checked on PostgreSQL 15). Guard this role's password like a superuser's.

\set ON_ERROR_STOP on

\if :{?sync_schema}
\else
\set sync_schema public
\endif
\if :{?sync_tables}
\else
\set sync_tables 'branches,rooms,profiles,patients,appointments,services,service_categories,invoices,invoice_items,payments,cash_closures,encounters,prescriptions,prescription_items,referrals,inventory_items,inventory_categories,inventory_movements,studies,study_files,crm_leads,crm_pipelines,crm_pipeline_stages'
\endif

-- ---------------------------------------------------------------------------
-- Preconditions: superuser, PostgreSQL 15+, a password for a new role.
-- ---------------------------------------------------------------------------
SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS cvsync_is_superuser,
       current_setting('server_version_num')::int >= 150000 AS cvsync_pg15,
       EXISTS (SELECT FROM pg_roles WHERE rolname = 'centrovision_sync') AS cvsync_role_exists
\gset

\if :cvsync_is_superuser
\else
DO $$ BEGIN
    RAISE EXCEPTION 'least_privilege_role.sql must be run by a PostgreSQL superuser (it creates a REPLICATION role and grants on system functions); you are %', current_user
        USING HINT = 'Linux: sudo -u postgres psql -d <database> -v sync_password=... -f least_privilege_role.sql';
END $$;
\endif

\if :cvsync_pg15
\else
DO $$ BEGIN
    RAISE EXCEPTION 'PostgreSQL % is too old for a non-superuser sync role: GRANT SET ON PARAMETER (needed for session_replication_role) exists from PostgreSQL 15',
        current_setting('server_version');
END $$;
\endif

\if :{?sync_password}
\elif :cvsync_role_exists
\echo 'role centrovision_sync exists: keeping its password (pass -v sync_password=... to change it)'
\else
DO $$ BEGIN
    RAISE EXCEPTION 'the role centrovision_sync does not exist yet: give its password with -v sync_password=...';
END $$;
\endif

BEGIN;

-- The DO blocks below cannot see psql variables: hand them over as
-- transaction-local settings.
SELECT set_config('cvsync.schema', :'sync_schema', true) AS cvsync_ignored,
       set_config('cvsync.tables', :'sync_tables', true) AS cvsync_ignored
\gset

-- ---------------------------------------------------------------------------
-- The role.
--   LOGIN        it connects.
--   REPLICATION  streams the pgoutput slot (START_REPLICATION), creates the
--                slot in init/resync, and pg_replication_slot_advance() on
--                shutdown. There is no GRANT for these: only this attribute.
--   NOSUPERUSER NOCREATEDB NOCREATEROLE: re-applied on every run, which is
--                what removes the temporary SUPERUSER given for `init`.
--   BYPASSRLS    only if a synced table has row level security enabled (set
--                below): the service must see and write every row, and the
--                policies of a Supabase schema dump (auth.uid()) would hide
--                them all from it.
-- ---------------------------------------------------------------------------
\if :cvsync_role_exists
\else
CREATE ROLE centrovision_sync LOGIN REPLICATION PASSWORD :'sync_password';
\endif
ALTER ROLE centrovision_sync WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT;
\if :{?sync_password}
ALTER ROLE centrovision_sync PASSWORD :'sync_password';
\endif

-- Connect to this database (and only this one, if PUBLIC's CONNECT was
-- revoked). pg_hba.conf must also allow it: see pg_hba.conf.snippet.
SELECT format('GRANT CONNECT ON DATABASE %I TO centrovision_sync', current_database())
\gexec

-- ---------------------------------------------------------------------------
-- The synced tables.
--   USAGE on their schema          to reach them.
--   SELECT, INSERT, UPDATE, DELETE the down path upserts upstream rows
--                                  (INSERT ... ON CONFLICT DO UPDATE) and
--                                  deletes, the up path reads rows (TOAST
--                                  fill, parent lookups). No TRUNCATE,
--                                  REFERENCES or TRIGGER.
--   USAGE, SELECT on their own sequences (serial/identity columns), in case a
--                                  column the upstream row lacks falls back
--                                  to its nextval() default.
-- Tables that do not exist (yet) are skipped with a NOTICE: re-run this
-- script after creating them.
-- ---------------------------------------------------------------------------
DO $cvsync$
DECLARE
    s text := current_setting('cvsync.schema');
    t text;
    rel regclass;
    seq regclass;
    missing text[] := '{}';
    rls text[] := '{}';
    n int := 0;
BEGIN
    IF to_regnamespace(quote_ident(s)) IS NULL THEN
        RAISE EXCEPTION 'schema "%" does not exist in database %', s, current_database()
            USING HINT = 'pass the [local_postgres] schema with -v sync_schema=...';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO centrovision_sync', s);

    FOREACH t IN ARRAY string_to_array(replace(current_setting('cvsync.tables'), ' ', ''), ',') LOOP
        CONTINUE WHEN t = '';
        rel := to_regclass(format('%I.%I', s, t));
        IF rel IS NULL OR NOT EXISTS (SELECT FROM pg_class WHERE oid = rel AND relkind IN ('r', 'p')) THEN
            missing := missing || t;
            CONTINUE;
        END IF;
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO centrovision_sync', rel);
        FOR seq IN
            SELECT d.objid::regclass
            FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = rel AND d.deptype IN ('a', 'i')
        LOOP
            EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO centrovision_sync', seq);
        END LOOP;
        IF (SELECT relrowsecurity FROM pg_class WHERE oid = rel) THEN
            rls := rls || t;
        END IF;
        n := n + 1;
    END LOOP;

    RAISE NOTICE 'centrovision_sync: granted SELECT, INSERT, UPDATE, DELETE on % table(s) in schema %', n, s;
    IF cardinality(missing) > 0 THEN
        RAISE NOTICE 'centrovision_sync: skipped (no such table in schema %): %', s, array_to_string(missing, ', ');
    END IF;
    IF cardinality(rls) > 0 THEN
        ALTER ROLE centrovision_sync BYPASSRLS;
        RAISE NOTICE 'centrovision_sync: BYPASSRLS granted, row level security is enabled on: %', array_to_string(rls, ', ');
    ELSE
        ALTER ROLE centrovision_sync NOBYPASSRLS;
    END IF;
END
$cvsync$;

-- ---------------------------------------------------------------------------
-- The control tables (_sync_metadata, _sync_log, _sync_state, ...: every
-- public._sync_* table; `init` creates them in schema public). The journal
-- (_sync_pending, _sync_capture, _sync_epoch) is in its own database beside
-- this one ([local_postgres] journal_database, default <database>_journal),
-- which `init` creates during its SUPERUSER window: run as the role, the role
-- owns that database and its tables; nothing there needs a grant. The role must own them: `init` alters them
-- on upgrades, the service writes and prunes them. When `init` ran as the role
-- they already are its own; if someone else created them (e.g. `init` with a
-- superuser's own credentials, or the tables of the original trigger-based
-- design), they are handed over here. Their serial sequences follow the
-- table. No CREATE on the schema is granted: the role creates them during
-- the SUPERUSER window of `init`.
-- ---------------------------------------------------------------------------
DO $cvsync$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
          AND c.relname LIKE '\_sync\_%' AND c.relowner <> 'centrovision_sync'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO centrovision_sync', rel);
        RAISE NOTICE 'centrovision_sync: now owns %', rel;
    END LOOP;
END
$cvsync$;

-- ---------------------------------------------------------------------------
-- Replication origin functions (PUBLIC's EXECUTE is revoked by default; only
-- superusers and explicit grantees may call them).
--   pg_replication_origin_session_setup(text)  the down path tags its writes
--                 with the origin, and the WAL consumer drops transactions
--                 carrying it: this is what prevents echo loops.
--   pg_replication_origin_session_reset()       releases it again.
--   pg_replication_origin_create(text)          creates the origin in `init`
--                 (`doctor` checks for it); harmless otherwise.
-- Not granted on purpose: pg_replication_origin_drop/advance (not used).
-- ---------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO centrovision_sync;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_reset() TO centrovision_sync;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) TO centrovision_sync;

-- session_replication_role = replica while applying upstream rows, so local
-- triggers (e.g. the one stamping updated_at) do not rewrite them. A superuser
-- only parameter; PostgreSQL 15+ can grant it.
GRANT SET ON PARAMETER session_replication_role TO centrovision_sync;

-- pg_logical_emit_message: `once` writes a marker into the WAL to know when
-- capture has caught up. PUBLIC may already execute it on a stock
-- PostgreSQL 15-17 (checked on 15); granted explicitly so it keeps working
-- where PUBLIC's EXECUTE was revoked by hardening.
GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) TO centrovision_sync;

-- Not needed, hence not granted:
--   CREATE on the database: only useful for CREATE PUBLICATION, which needs
--     table ownership anyway (see the top of this file); it would also let
--     the role create schemas.
--   CREATE on schema public: the role would be able to plant functions or
--     operators that other users' unqualified calls resolve to. The control
--     tables are created during init's SUPERUSER window instead.
--   pg_replication_slot_advance, pg_create_logical_replication_slot,
--     pg_drop_replication_slot, pg_current_wal_lsn, pg_try_advisory_lock:
--     executable by PUBLIC; the slot functions check the REPLICATION
--     attribute themselves.

COMMIT;

SELECT r.rolname AS role, r.rolsuper AS superuser, r.rolreplication AS replication,
       r.rolbypassrls AS bypassrls, r.rolcanlogin AS login
FROM pg_roles r WHERE r.rolname = 'centrovision_sync';
