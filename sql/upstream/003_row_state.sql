-- 003_row_state.sql — upstream (Supabase) per-row sync state: versions, tombstones, the change
-- feed and the conflict log.  Installed by `init --upstream` (or pasted from
-- `init --print-upstream-sql`) after 001 and 002; idempotent; one transaction.
--
-- Why: several clinic servers (each offline for hours, each with its own clock) and the cloud app
-- write one project.  `updated_at` alone can neither order one writer's changes (transactions
-- commit in another order than they start; clocks get corrected) nor tell a delete from a row
-- never seen.  So every row of a synced table gets a version record here, written in the same
-- transaction as the row itself:
--   * by `public.centrovision_sync_apply` for clinic writes (001_apply.sql), and
--   * by the trigger `centrovision_sync.record_write()` for every other writer (the cloud app, the
--     SQL editor): `centrovision_sync.enroll_table()` installs it on each synced table.
-- The app's tables keep their columns; all sync state lives in schema `centrovision_sync`, which
-- only its owner can touch (API roles reach it through the SECURITY DEFINER functions below).
--
-- THE CONFLICT RULE (the README states it too; tests/it/multi_clinic.rs checks it line by line):
--   1. Changes from the same writer apply in that writer's commit order — (epoch, commit LSN,
--      ordinal) — whatever their updated_at.  An older or repeated position is a no-op.
--   2. Between different writers the later conflict stamp wins; on equal stamps a delete wins,
--      then the higher writer id (byte order), so every side decides alike whichever syncs first.
--   3. A delete is a version like any other (stamp: the deleting transaction's commit time), kept
--      as a tombstone: an older edit never brings a deleted row back.
--   4. A stamp further than `max_clock_skew_seconds` ahead of the server's clock counts as the
--      server's now (the apply result lists such changes under "clamped" so the clinic logs them).
--   A change that loses is not applied; the losing version goes to the conflict log with the
--   winner and the rule, and the winner is re-emitted into the feed so the losing clinic gets it.
--
-- Tables (schema centrovision_sync):
--   synced_table     THE TABLES THIS PROJECT SYNCS, (schema, table): the only tables the SECURITY
--                    DEFINER functions (apply, verify hashes, feed, row versions, conflicts) write
--                    or read for a caller.  Written only by `enroll_table` (`init --upstream` or
--                    `init --print-upstream-sql`: one row per [sync] tables entry, in the
--                    [supabase] schema) and, when this file is installed, for every table already
--                    carrying the enrolment trigger (projects enrolled before this table existed);
--                    never by a function the API roles can call.  Never rows for pg_*,
--                    information_schema, centrovision_sync, nor Supabase's own schemas (auth,
--                    storage, ...).  Additive: clinics sharing a project may sync different
--                    tables, so a table leaves only by hand (DELETE here and drop its two
--                    centrovision_sync_* triggers).  Refusals are SQLSTATE 42501 naming the table
--                    and the fix: add it to [sync] tables and run `init --upstream`.
--   settings         key/value: max_clock_skew_seconds, tombstone_retention_days,
--                    conflict_retention_days (written by `init --upstream` from config.toml).
--   row_version      one row per (schema, table, pk): the row's latest version — writer, its
--                    commit position (epoch, commit_lsn, ordinal; NULL for non-clinic writers),
--                    stamp, deleted (tombstone), version_id (server order of versions) and xid
--                    (the transaction that last recorded or re-emitted it: the feed's position).
--   writer_progress  per clinic writer: how far upstream has processed its changes — the highest
--                    (epoch, journal id) of any call, and that call's highest commit LSN.
--   conflict         every version that lost, with both images, the rule, and when.
--
-- THE FEED (`public.centrovision_sync_changes`): a clinic polls it every interval.  Its cursor
-- is a pair of PostgreSQL snapshots: a page returns versions whose xid is visible in `target` but
-- was not in `prev` — transactions that committed between two polls, in no clock's terms — so a
-- transaction that commits late is delivered by the poll after its commit, never skipped, with no
-- overlap window.  Paging inside a window is by version_id.  When a window is exhausted the caller
-- moves prev := target and the next call takes a fresh target.  Versions written by the calling
-- clinic itself are left out (a clinic never downloads its own writes).  The answer also carries
-- writer_progress for the caller, read in the same snapshot: the local side skips an incoming
-- version for a row whose local change upstream has not processed yet (it will be decided
-- upstream, and re-emitted if the local change loses).
--
-- BRANCH SCOPE (contract 4): a clinic server configured with `[sync] branch_ids` passes `scope`
-- ({"branches": [...], "tables": {"<table>": {"branch": "branch_id", "via": [{"fk", "parent",
-- "pk"}, ...]}}}; tables absent from it are shared).  The feed then returns a row image only when
-- the row is in scope now — its branch column (reached through the `via` foreign keys, each parent
-- a synced table) is one of the branches, or NULL (not assigned to a branch) — so no other
-- branch's row ever leaves.  A version whose row is out of scope is left out of the first window
-- (prev NULL: nothing of it is downloaded yet) and afterwards returned as {"op": "out"} with its
-- key only: the row may have moved away from the caller's branches, and the caller removes its
-- local copy if that copy was in its scope.  Deletes (tombstones) carry no row and are returned
-- as before.  `centrovision_sync.scope_predicate` builds the test; written by no one, read only.
--
-- `public.centrovision_sync_row_versions` answers the current version of given rows, for
-- `verify --repair` and `resync`.
--
-- Retention: tombstones and conflict rows older than their retention are pruned by
-- `public.centrovision_sync_prune()` (the service calls it daily).  A clinic offline for longer
-- than tombstone_retention_days may bring back a row deleted meanwhile; the feed answers
-- "horizon_passed": true for such a cursor and the service alerts and asks for `verify --repair`.

BEGIN;

CREATE SCHEMA IF NOT EXISTS centrovision_sync;
REVOKE ALL ON SCHEMA centrovision_sync FROM PUBLIC;

CREATE TABLE IF NOT EXISTS centrovision_sync.synced_table (
  schema_name text        NOT NULL,
  table_name  text        NOT NULL,
  enrolled_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, table_name),
  CONSTRAINT synced_table_not_a_system_schema CHECK (
    schema_name NOT IN ('information_schema', 'centrovision_sync') AND schema_name NOT LIKE 'pg\_%')
);

CREATE TABLE IF NOT EXISTS centrovision_sync.settings (
  key   text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO centrovision_sync.settings (key, value) VALUES
  ('max_clock_skew_seconds', '300'),
  ('tombstone_retention_days', '90'),
  ('conflict_retention_days', '90')
ON CONFLICT (key) DO NOTHING;

CREATE SEQUENCE IF NOT EXISTS centrovision_sync.version_seq;

CREATE TABLE IF NOT EXISTS centrovision_sync.row_version (
  schema_name text        NOT NULL,
  table_name  text        NOT NULL,
  pk          text        NOT NULL,
  writer      text        NOT NULL,
  epoch       integer,
  commit_lsn  pg_lsn,
  ordinal     integer,
  stamp       timestamptz,
  deleted     boolean     NOT NULL DEFAULT false,
  version_id  bigint      NOT NULL,
  xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, table_name, pk)
);
CREATE INDEX IF NOT EXISTS row_version_feed ON centrovision_sync.row_version (xid);
CREATE INDEX IF NOT EXISTS row_version_window ON centrovision_sync.row_version (version_id);
CREATE INDEX IF NOT EXISTS row_version_tombstones ON centrovision_sync.row_version (recorded_at)
  WHERE deleted;

CREATE TABLE IF NOT EXISTS centrovision_sync.writer_progress (
  writer     text        PRIMARY KEY,
  epoch      integer     NOT NULL,
  journal_id bigint      NOT NULL,
  commit_lsn pg_lsn      NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS centrovision_sync.conflict (
  id             bigserial   PRIMARY KEY,
  schema_name    text        NOT NULL,
  table_name     text        NOT NULL,
  pk             text        NOT NULL,
  winner_writer  text        NOT NULL,
  winner_stamp   timestamptz,
  winner_deleted boolean     NOT NULL,
  winner_image   jsonb,
  loser_writer   text        NOT NULL,
  loser_stamp    timestamptz,
  loser_deleted  boolean     NOT NULL,
  loser_image    jsonb,
  rule           text        NOT NULL,
  decided_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conflict_decided ON centrovision_sync.conflict (decided_at);

-- The writer id of a write that did not come through the apply function: the API role
-- (PostgREST sets `role`) or the session user (SQL editor, migrations).
CREATE OR REPLACE FUNCTION centrovision_sync.other_writer()
RETURNS text LANGUAGE sql STABLE SET search_path = ''
AS $fn$
  SELECT 'cloud:' || coalesce(nullif(pg_catalog.current_setting('role', true), 'none'),
                              pg_catalog.session_user()::text)
$fn$;

-- Row trigger for every writer other than a clinic (clinic writes run with
-- session_replication_role = replica, so ordinary triggers like this one do not fire for them).
-- TG_ARGV[0] is the primary key column.
CREATE OR REPLACE FUNCTION centrovision_sync.record_write()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $fn$
DECLARE
  v_pk     text;
  v_stamp  timestamptz;
  v_skew   double precision;
BEGIN
  IF TG_OP = 'DELETE' THEN
    v_pk := pg_catalog.to_jsonb(OLD) ->> TG_ARGV[0];
    v_stamp := pg_catalog.now();
  ELSE
    v_pk := pg_catalog.to_jsonb(NEW) ->> TG_ARGV[0];
    v_stamp := (pg_catalog.to_jsonb(NEW) ->> 'updated_at')::timestamptz;
    SELECT s.value::double precision INTO v_skew
    FROM centrovision_sync.settings s WHERE s.key = 'max_clock_skew_seconds';
    IF v_stamp IS NULL OR v_stamp > pg_catalog.now() + pg_catalog.make_interval(secs => coalesce(v_skew, 300)) THEN
      v_stamp := pg_catalog.now();
    END IF;
  END IF;
  IF TG_OP = 'UPDATE' AND (pg_catalog.to_jsonb(OLD) ->> TG_ARGV[0]) IS DISTINCT FROM v_pk THEN
    -- a key change is a delete of the old key and an insert of the new one
    INSERT INTO centrovision_sync.row_version AS v
      (schema_name, table_name, pk, writer, stamp, deleted, version_id)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, pg_catalog.to_jsonb(OLD) ->> TG_ARGV[0],
            centrovision_sync.other_writer(), pg_catalog.now(), true,
            pg_catalog.nextval('centrovision_sync.version_seq'))
    ON CONFLICT (schema_name, table_name, pk) DO UPDATE SET
      writer = EXCLUDED.writer, epoch = NULL, commit_lsn = NULL, ordinal = NULL,
      stamp = EXCLUDED.stamp, deleted = true, version_id = EXCLUDED.version_id,
      xid = pg_catalog.pg_current_xact_id(), recorded_at = pg_catalog.now();
  END IF;
  INSERT INTO centrovision_sync.row_version AS v
    (schema_name, table_name, pk, writer, stamp, deleted, version_id)
  VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, v_pk, centrovision_sync.other_writer(), v_stamp,
          TG_OP = 'DELETE', pg_catalog.nextval('centrovision_sync.version_seq'))
  ON CONFLICT (schema_name, table_name, pk) DO UPDATE SET
    writer = EXCLUDED.writer, epoch = NULL, commit_lsn = NULL, ordinal = NULL,
    stamp = EXCLUDED.stamp, deleted = EXCLUDED.deleted, version_id = EXCLUDED.version_id,
    xid = pg_catalog.pg_current_xact_id(), recorded_at = pg_catalog.now();
  RETURN NULL;
END
$fn$;

-- Statement trigger: a TRUNCATE by another writer tombstones every row of the table.
CREATE OR REPLACE FUNCTION centrovision_sync.record_truncate()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $fn$
BEGIN
  UPDATE centrovision_sync.row_version v SET
    writer = centrovision_sync.other_writer(), epoch = NULL, commit_lsn = NULL, ordinal = NULL,
    stamp = pg_catalog.now(), deleted = true,
    version_id = pg_catalog.nextval('centrovision_sync.version_seq'),
    xid = pg_catalog.pg_current_xact_id(), recorded_at = pg_catalog.now()
  WHERE v.schema_name = TG_TABLE_SCHEMA AND v.table_name = TG_TABLE_NAME AND NOT v.deleted;
  RETURN NULL;
END
$fn$;

-- Puts one upstream table under sync state: registers it in synced_table (from then on the sync
-- functions accept it), installs the triggers for other writers and records a version for each
-- existing row that has none (writer 'legacy', stamp = updated_at), so a clinic's first download
-- and every later conflict decision see it.  Idempotent.  Refuses system schemas and Supabase's
-- own (42501): the service never syncs auth.users or storage.objects.
CREATE OR REPLACE FUNCTION centrovision_sync.enroll_table(p_schema text, p_table text)
RETURNS bigint LANGUAGE plpgsql SET search_path = ''
AS $fn$
DECLARE
  v_rel  regclass := pg_catalog.format('%I.%I', p_schema, p_table)::regclass;
  v_pk   text;
  v_n    bigint;
BEGIN
  IF p_schema IN ('information_schema', 'centrovision_sync', 'auth', 'storage', 'realtime',
                  '_realtime', 'vault', 'extensions', 'graphql', 'graphql_public', 'pgsodium',
                  'pgsodium_masks', 'net', 'supabase_functions', 'supabase_migrations', 'cron',
                  'pgbouncer', '_analytics')
     OR p_schema LIKE 'pg\_%' THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = pg_catalog.format('centrovision sync does not sync tables of schema %I (%s)', p_schema, v_rel),
      HINT = 'sync the application''s own tables: set [supabase] schema to their schema (usually public)';
  END IF;
  INSERT INTO centrovision_sync.synced_table (schema_name, table_name)
  VALUES (p_schema, p_table) ON CONFLICT DO NOTHING;
  SELECT min(a.attname::text) INTO v_pk
  FROM pg_catalog.pg_index x
  JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
  WHERE x.indrelid = v_rel AND x.indisprimary
  HAVING count(*) = 1;
  IF v_pk IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '0A000',
      MESSAGE = pg_catalog.format('upstream table %s needs a single-column primary key to be synced', v_rel);
  END IF;
  EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS centrovision_sync_record ON %s', v_rel);
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER centrovision_sync_record AFTER INSERT OR UPDATE OR DELETE ON %s'
    ' FOR EACH ROW EXECUTE FUNCTION centrovision_sync.record_write(%L)', v_rel, v_pk);
  EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS centrovision_sync_truncate ON %s', v_rel);
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER centrovision_sync_truncate AFTER TRUNCATE ON %s'
    ' FOR EACH STATEMENT EXECUTE FUNCTION centrovision_sync.record_truncate()', v_rel);
  EXECUTE pg_catalog.format(
    'INSERT INTO centrovision_sync.row_version (schema_name, table_name, pk, writer, stamp, version_id)'
    ' SELECT %L, %L, d.%I::text, ''legacy'', d.updated_at, pg_catalog.nextval(''centrovision_sync.version_seq'')'
    ' FROM %s d ORDER BY d.updated_at NULLS FIRST, d.%I'
    ' ON CONFLICT DO NOTHING', p_schema, p_table, v_pk, v_rel, v_pk);
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$fn$;
REVOKE EXECUTE ON FUNCTION centrovision_sync.enroll_table(text, text) FROM PUBLIC;

-- Tables enrolled before synced_table existed (they carry the enrolment trigger) stay synced.
INSERT INTO centrovision_sync.synced_table (schema_name, table_name)
SELECT n.nspname::text, c.relname::text
FROM pg_catalog.pg_trigger tg
JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE tg.tgname = 'centrovision_sync_record'
  AND tg.tgfoid = 'centrovision_sync.record_write()'::pg_catalog.regprocedure
  AND n.nspname NOT IN ('information_schema', 'centrovision_sync') AND n.nspname NOT LIKE 'pg\_%'
ON CONFLICT DO NOTHING;

-- The branch test of one table for the feed (see BRANCH SCOPE in the header): a boolean SQL
-- expression on the row alias `d`, comparing the branch column with `$9` (text[]); 'true' for a
-- table `p_scope` does not list (shared) or a NULL `p_scope` (unscoped caller).  Every parent a
-- `via` step names must be a synced table of `p_schema` (42501 otherwise): the test reads no
-- other table.  Identifiers are quoted with %I.
CREATE OR REPLACE FUNCTION centrovision_sync.scope_predicate(p_schema text, p_table text, p_scope jsonb)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = ''
AS $fn$
DECLARE
  v_t     jsonb := p_scope -> 'tables' -> p_table;
  v_hop   jsonb;
  v_prev  text := 'd';
  v_alias text;
  v_i     integer := 0;
  v_open  text := '';
  v_close text := '';
BEGIN
  IF p_scope IS NULL OR v_t IS NULL OR pg_catalog.jsonb_typeof(v_t) <> 'object' THEN
    RETURN 'true';
  END IF;
  FOR v_hop IN SELECT h FROM pg_catalog.jsonb_array_elements(coalesce(v_t -> 'via', '[]')) h LOOP
    v_i := v_i + 1;
    IF v_i > 8 OR NOT EXISTS (SELECT 1 FROM centrovision_sync.synced_table st
                              WHERE st.schema_name = p_schema AND st.table_name = v_hop ->> 'parent') THEN
      RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = pg_catalog.format('the branch scope of %s reaches %s, which this project does not sync',
                                    p_table, coalesce(v_hop ->> 'parent', 'NULL'));
    END IF;
    v_alias := '_cvs_s' || v_i;
    v_open := v_open || pg_catalog.format(
      '(%1$s.%2$I IS NULL OR EXISTS (SELECT 1 FROM %3$I.%4$I %5$s WHERE %5$s.%6$I = %1$s.%2$I AND ',
      v_prev, v_hop ->> 'fk', p_schema, v_hop ->> 'parent', v_alias, v_hop ->> 'pk');
    v_close := v_close || '))';
    v_prev := v_alias;
  END LOOP;
  RETURN v_open || pg_catalog.format('(%1$s.%2$I IS NULL OR %1$s.%2$I::text = ANY ($9))',
                                     v_prev, coalesce(v_t ->> 'branch', 'branch_id')) || v_close;
END
$fn$;
REVOKE EXECUTE ON FUNCTION centrovision_sync.scope_predicate(text, text, jsonb) FROM PUBLIC;

-- Contract 3's signature (no scope) is replaced by the one below.
DROP FUNCTION IF EXISTS public.centrovision_sync_changes(text, text, text[], text, text, bigint, integer, timestamptz);

-- The change feed (see the header).  Arguments:
--   writer        the calling clinic (its own versions are left out)
--   schema_name   the synced schema; tables: the synced tables
--   prev          snapshot text of the last completed window, NULL = from the beginning
--   target        snapshot text of the window being read, NULL = take the current one
--   after         version_id already read inside this window (0 at a window's start)
--   lim           page size
--   since         only with prev NULL: skip versions stamped before it (upgrade from a
--                 timestamp watermark: what the clinic already has is not downloaded again)
--   scope         the caller's branch scope (BRANCH SCOPE in the header), NULL = unscoped
-- Returns {"target": snapshot, "complete": bool, "after": last version_id,
--          "horizon_passed": bool, "restarted": bool (the cursor was ahead of this server — a
--          restored database — and the window starts again from the beginning),
--          "missing": requested tables that do not exist upstream (their versions are skipped), "progress": {"epoch": n, "journal_id": n, "lsn": "X/Y"} | null,
--          "changes": [{"t", "k", "op": "upsert"|"delete"|"out", "w", "v", "ts", "row"}]}
-- as one jsonb value (never cut by PostgREST's max-rows).
CREATE OR REPLACE FUNCTION public.centrovision_sync_changes(
  writer text, schema_name text, tables text[], prev text, target text, after bigint,
  lim integer, since timestamptz DEFAULT NULL, scope jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' SET jit = off
AS $fn$
DECLARE
  v_branches text[] := ARRAY(SELECT pg_catalog.jsonb_array_elements_text(
                               CASE WHEN pg_catalog.jsonb_typeof(scope -> 'branches') = 'array'
                                    THEN scope -> 'branches' ELSE '[]' END));
  v_pred    text;
  v_first   text;
  v_pktype  text;
  v_prev    pg_catalog.pg_snapshot := prev::pg_catalog.pg_snapshot;
  v_target  pg_catalog.pg_snapshot := coalesce(target::pg_catalog.pg_snapshot, pg_catalog.pg_current_snapshot());
  v_lim     integer := greatest(1, least(coalesce(lim, 1000), 10000));
  v_floor   xid8 := coalesce(pg_catalog.pg_snapshot_xmin(prev::pg_catalog.pg_snapshot), '0'::xid8);
  v_changes jsonb := '[]';
  v_n       integer;
  v_last    bigint := coalesce(after, 0);
  v_o       integer[];
  v_ts      text[];
  v_ks      text[];
  v_ws      text[];
  v_vs      bigint[];
  v_st      timestamptz[];
  v_del     boolean[];
  v_t       text;
  v_pk      text;
  v_astext  text;
  v_part    jsonb;
  v_prog    jsonb;
  v_horizon boolean;
  v_restart boolean := false;
  v_missing text[];
  v_sort    text;
  v_bitmap  text;
BEGIN
  IF writer IS NULL OR writer = '' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'centrovision_sync_changes: writer is required';
  END IF;
  -- A cursor ahead of this server's transaction counter: the database was restored from a backup
  -- taken before the cursor (point-in-time recovery), and new transactions reuse xids the cursor
  -- counts as seen.  Read from the start again instead of skipping them.
  IF pg_catalog.pg_snapshot_xmax(coalesce(target::pg_catalog.pg_snapshot, v_prev))
       > pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()) THEN
    v_prev := NULL;
    v_target := pg_catalog.pg_current_snapshot();
    v_floor := '0'::xid8;
    v_last := 0;
    v_restart := true;
  END IF;
  -- requested tables that do not exist here (dropped or renamed upstream): named in the answer
  -- so the clinic reports them; their versions are skipped and the other tables keep flowing
  SELECT coalesce(array_agg(t ORDER BY t), '{}') INTO v_missing FROM unnest(tables) AS t
  WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', schema_name, t)) IS NULL;
  -- only tables this project syncs (synced_table, see the header): no other table's rows leave
  tables := ARRAY(SELECT t FROM unnest(tables) AS t
                  WHERE EXISTS (SELECT 1 FROM centrovision_sync.synced_table st
                                WHERE st.schema_name = centrovision_sync_changes.schema_name
                                  AND st.table_name = t));

  -- A scoped caller's first window (prev NULL) leaves out-of-scope rows out of the page itself
  -- (BRANCH SCOPE in the header): the page's LIMIT counts only versions it will return, so one
  -- branch of ten costs about a tenth of the calls.  Elsewhere the test is 'true'.
  v_first := 'true';
  IF scope IS NOT NULL AND v_prev IS NULL THEN
    v_first := '';
    FOR v_t IN SELECT x FROM unnest(tables) x WHERE x <> ALL (v_missing) AND (scope -> 'tables') ? x LOOP
      SELECT min(a.attname::text), min(pg_catalog.format_type(a.atttypid, a.atttypmod)) INTO v_pk, v_pktype
      FROM pg_catalog.pg_index x
      JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
      WHERE x.indrelid = pg_catalog.format('%I.%I', schema_name, v_t)::regclass AND x.indisprimary;
      v_first := v_first || pg_catalog.format(
        ' WHEN %L THEN EXISTS (SELECT 1 FROM %I.%I d WHERE d.%I = r.pk::%s AND (%s))',
        v_t, schema_name, v_t, v_pk, v_pktype, centrovision_sync.scope_predicate(schema_name, v_t, scope));
    END LOOP;
    v_first := CASE WHEN v_first = '' THEN 'true' ELSE 'CASE r.table_name' || v_first || ' ELSE true END' END;
  END IF;

  -- A first window (every version of the tables) walks row_version_window in version_id order
  -- from `after` and stops at the LIMIT.  Left to itself the planner reads every remaining version
  -- (primary key or bitmap scan) and sorts them, on every page: quadratic in the initial download.
  -- The settings are this transaction's and put back right after the statement.
  IF v_prev IS NULL THEN
    v_sort := pg_catalog.current_setting('enable_sort');
    v_bitmap := pg_catalog.current_setting('enable_bitmapscan');
    PERFORM pg_catalog.set_config('enable_sort', 'off', true), pg_catalog.set_config('enable_bitmapscan', 'off', true);
  END IF;
  -- the page's versions, ordered by version_id
  EXECUTE pg_catalog.format(
    'SELECT coalesce(array_agg(q.o ORDER BY q.o), ''{}''), array_agg(q.table_name ORDER BY q.o),'
    '       array_agg(q.pk ORDER BY q.o), array_agg(q.writer ORDER BY q.o),'
    '       array_agg(q.version_id ORDER BY q.o), array_agg(q.stamp ORDER BY q.o),'
    '       array_agg(q.deleted ORDER BY q.o)'
    ' FROM (SELECT (row_number() OVER (ORDER BY p.version_id))::int AS o, p.* FROM ('
    -- the LIMIT applies inside, with no window function above it, so the page can walk
    -- row_version_window in version_id order and stop (a first window read every version per page)
    '   SELECT r.*'
    '   FROM centrovision_sync.row_version r'
    '   WHERE r.xid >= $1'
    '     AND r.schema_name = $2'
    '     AND r.table_name = ANY ($3)'
    '     AND r.version_id > $4'
    '     AND r.writer <> $5'
    '     AND pg_catalog.pg_visible_in_snapshot(r.xid, $6)'
    '     AND ($10::pg_catalog.pg_snapshot IS NULL OR NOT pg_catalog.pg_visible_in_snapshot(r.xid, $10))'
    '     AND ($10::pg_catalog.pg_snapshot IS NOT NULL OR $7::timestamptz IS NULL OR r.stamp IS NULL OR r.stamp >= $7)'
    '     AND (r.deleted OR %s)'
    '   ORDER BY r.version_id'
    '   LIMIT $8) p) q', v_first)
  INTO v_o, v_ts, v_ks, v_ws, v_vs, v_st, v_del
  USING v_floor, schema_name, tables, v_last, writer, v_target, since, v_lim, v_branches, v_prev;
  IF v_prev IS NULL THEN
    PERFORM pg_catalog.set_config('enable_sort', v_sort, true), pg_catalog.set_config('enable_bitmapscan', v_bitmap, true);
  END IF;
  v_n := cardinality(v_o);
  IF v_n > 0 THEN
    v_last := v_vs[v_n];
  END IF;

  -- row images, one statement per table present in the page
  FOR v_t IN SELECT DISTINCT x FROM unnest(v_ts) x WHERE x <> ALL (v_missing) LOOP
    SELECT min(a.attname::text), min(pg_catalog.format_type(a.atttypid, a.atttypmod)) INTO v_pk, v_pktype
    FROM pg_catalog.pg_index x
    JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
    WHERE x.indrelid = pg_catalog.format('%I.%I', schema_name, v_t)::regclass AND x.indisprimary;
    -- arrays of json/jsonb travel in their text form: to_jsonb would turn an element that is JSON
    -- null into the same null as an SQL NULL element
    SELECT coalesce(' || pg_catalog.jsonb_build_object(' || string_agg(
             pg_catalog.format('%L, pg_catalog.to_jsonb(d.%I::text)', a.attname, a.attname), ', ') || ')', '')
    INTO v_astext
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
    WHERE a.attrelid = pg_catalog.format('%I.%I', schema_name, v_t)::regclass AND a.attnum > 0
      AND NOT a.attisdropped AND ty.typcategory = 'A'
      AND ty.typelem IN ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype);
    -- the branch test (BRANCH SCOPE): out-of-scope rows never carry their image
    v_pred := centrovision_sync.scope_predicate(schema_name, v_t, scope);
    EXECUTE pg_catalog.format(
      'SELECT coalesce(pg_catalog.jsonb_agg(CASE WHEN d.%2$I IS NULL OR (%4$s) THEN'
      '  pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('
      '  ''o'', p.o, ''t'', p.t, ''k'', p.k, ''w'', p.w, ''v'', p.v, ''ts'', p.ts,'
      '  ''op'', CASE WHEN d.%2$I IS NULL THEN ''delete'' ELSE ''upsert'' END))'
      '  || CASE WHEN d.%2$I IS NOT NULL THEN pg_catalog.jsonb_build_object(''row'', pg_catalog.to_jsonb(d.*)%3$s)'
      '          ELSE ''{}'' END'
      '  ELSE pg_catalog.jsonb_build_object(''o'', p.o, ''t'', p.t, ''k'', p.k, ''w'', p.w, ''v'', p.v, ''op'', ''out'')'
      '  END), ''[]'')'
      ' FROM unnest($1, $2, $3, $4, $5, $6, $7) AS p(o, t, k, w, v, ts, del)'
      -- the key cast to the column's type, so each image is one primary-key probe
      ' LEFT JOIN %1$s d ON d.%2$I = p.k::%5$s AND NOT p.del'
      ' WHERE p.t = $8 AND (d.%2$I IS NULL OR $10 OR (%4$s))',
      pg_catalog.format('%I.%I', schema_name, v_t), v_pk, v_astext, v_pred, v_pktype)
    INTO v_part USING v_o, v_ts, v_ks, v_ws, v_vs, v_st, v_del, v_t, v_branches, v_prev IS NOT NULL;
    v_changes := v_changes || v_part;
  END LOOP;
  IF v_n > 0 THEN
    -- (a scoped caller's page may keep none of its versions: still an array)
    SELECT coalesce(pg_catalog.jsonb_agg(c - 'o' ORDER BY (c->>'o')::int), '[]')
    INTO v_changes FROM pg_catalog.jsonb_array_elements(v_changes) c;
  END IF;

  SELECT pg_catalog.jsonb_build_object('epoch', wp.epoch, 'journal_id', wp.journal_id, 'lsn', wp.commit_lsn::text)
  INTO v_prog FROM centrovision_sync.writer_progress wp WHERE wp.writer = centrovision_sync_changes.writer;

  -- the cursor's window started before the last tombstone prune: deletes may be gone
  SELECT v_prev IS NOT NULL AND pg_catalog.pg_snapshot_xmin(v_prev) < s.value::xid8 INTO v_horizon
  FROM centrovision_sync.settings s WHERE s.key = 'pruned_xid';

  RETURN pg_catalog.jsonb_build_object(
    'target', v_target::text, 'complete', v_n < v_lim, 'after', v_last,
    'horizon_passed', coalesce(v_horizon, false), 'restarted', v_restart, 'progress', v_prog,
    'missing', pg_catalog.to_jsonb(v_missing), 'changes', v_changes);
END
$fn$;

-- The current version of some rows of one table, for `verify --repair` and `resync` (they decide
-- from it, never from a clock watermark): [{"k": key, "w": writer, "v": version_id, "ts": stamp,
-- "del": tombstone?, "seen": the version's transaction is visible in the snapshot `seen_in`, i.e.
-- the clinic's feed had already passed it (its last completed window, `_sync_metadata.feed_prev`)}].
-- Keys with no recorded version are absent.
CREATE OR REPLACE FUNCTION public.centrovision_sync_row_versions(
  schema_name text, table_name text, keys text[], seen_in text)
RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $fn$
  SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
           'k', r.pk, 'w', r.writer, 'v', r.version_id, 'ts', r.stamp, 'del', r.deleted,
           'seen', coalesce(pg_catalog.pg_visible_in_snapshot(r.xid, seen_in::pg_catalog.pg_snapshot), false))
         ORDER BY r.pk), '[]')
  FROM centrovision_sync.row_version r
  WHERE r.schema_name = centrovision_sync_row_versions.schema_name
    AND r.table_name = centrovision_sync_row_versions.table_name
    AND r.pk = ANY (keys)
    -- only a table this project syncs (synced_table, see the header)
    AND EXISTS (SELECT 1 FROM centrovision_sync.synced_table st
                WHERE st.schema_name = r.schema_name AND st.table_name = r.table_name)
$fn$;

-- The conflict log, newest first: [{id, table, key, winner:{writer,stamp,deleted,image},
-- loser:{...}, rule, decided_at}].
CREATE OR REPLACE FUNCTION public.centrovision_sync_conflicts(
  schema_name text, tables text[], since timestamptz, lim integer)
RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $fn$
  SELECT coalesce(pg_catalog.jsonb_agg(x.j ORDER BY x.id DESC), '[]')
  FROM (
    SELECT c.id, pg_catalog.jsonb_build_object(
             'id', c.id, 'table', c.table_name, 'key', c.pk, 'rule', c.rule,
             'decided_at', c.decided_at,
             'winner', pg_catalog.jsonb_build_object('writer', c.winner_writer,
                         'stamp', c.winner_stamp, 'deleted', c.winner_deleted, 'image', c.winner_image),
             'loser', pg_catalog.jsonb_build_object('writer', c.loser_writer,
                         'stamp', c.loser_stamp, 'deleted', c.loser_deleted, 'image', c.loser_image)) AS j
    FROM centrovision_sync.conflict c
    WHERE c.schema_name = centrovision_sync_conflicts.schema_name
      AND (tables IS NULL OR c.table_name = ANY (tables))
      AND (since IS NULL OR c.decided_at >= since)
      -- only tables this project syncs (synced_table, see the header): the images are their rows
      AND EXISTS (SELECT 1 FROM centrovision_sync.synced_table st
                  WHERE st.schema_name = c.schema_name AND st.table_name = c.table_name)
    ORDER BY c.id DESC
    LIMIT greatest(1, least(coalesce(lim, 100), 10000))
  ) x
$fn$;

-- Number of conflicts decided since a time (status).
CREATE OR REPLACE FUNCTION public.centrovision_sync_conflict_count(schema_name text, since timestamptz)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $fn$
  SELECT count(*) FROM centrovision_sync.conflict c
  WHERE c.schema_name = centrovision_sync_conflict_count.schema_name
    AND (since IS NULL OR c.decided_at >= since)
$fn$;

-- Retention: drops tombstones and conflict rows past their retention (settings); remembers the
-- newest pruned tombstone's position so the feed can tell a cursor that predates it.
-- Returns {"tombstones": n, "conflicts": n}.
CREATE OR REPLACE FUNCTION public.centrovision_sync_prune()
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $fn$
DECLARE
  v_tdays double precision;
  v_cdays double precision;
  v_t     bigint;
  v_c     bigint;
  v_xid   xid8;
BEGIN
  SELECT s.value::double precision INTO v_tdays FROM centrovision_sync.settings s
  WHERE s.key = 'tombstone_retention_days';
  SELECT s.value::double precision INTO v_cdays FROM centrovision_sync.settings s
  WHERE s.key = 'conflict_retention_days';
  WITH d AS (
    DELETE FROM centrovision_sync.row_version v
    WHERE v.deleted AND v.recorded_at < pg_catalog.now() - pg_catalog.make_interval(days => 1) * coalesce(v_tdays, 90)
    RETURNING v.xid)
  SELECT count(*), max(d.xid::text::numeric)::text::xid8 INTO v_t, v_xid FROM d;
  IF v_xid IS NOT NULL THEN
    INSERT INTO centrovision_sync.settings (key, value) VALUES ('pruned_xid', v_xid::text)
    ON CONFLICT (key) DO UPDATE SET value = greatest(EXCLUDED.value::numeric,
                                                     centrovision_sync.settings.value::numeric)::text;
  END IF;
  DELETE FROM centrovision_sync.conflict c
  WHERE c.decided_at < pg_catalog.now() - pg_catalog.make_interval(days => 1) * coalesce(v_cdays, 90);
  GET DIAGNOSTICS v_c = ROW_COUNT;
  RETURN pg_catalog.jsonb_build_object('tombstones', v_t, 'conflicts', v_c);
END
$fn$;

REVOKE EXECUTE ON FUNCTION public.centrovision_sync_changes(text, text, text[], text, text, bigint, integer, timestamptz, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_conflicts(text, text[], timestamptz, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_conflict_count(text, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_prune() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_row_versions(text, text, text[], text) FROM PUBLIC;
DO $do$
DECLARE
  r text;
  f text;
BEGIN
  FOREACH f IN ARRAY ARRAY[
      'public.centrovision_sync_changes(text, text, text[], text, text, bigint, integer, timestamptz, jsonb)',
      'public.centrovision_sync_conflicts(text, text[], timestamptz, integer)',
      'public.centrovision_sync_conflict_count(text, timestamptz)',
      'public.centrovision_sync_row_versions(text, text, text[], text)',
      'public.centrovision_sync_prune()'] LOOP
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
      IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', f, r);
      END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', f);
    END IF;
  END LOOP;
END
$do$;

NOTIFY pgrst, 'reload schema';

COMMIT;
