-- 001_apply.sql — upstream (Supabase) side of centrovision-sync: batch apply under the conflict
-- rule of 003_row_state.sql (same writer: commit order; different writers: later stamp, ties by
-- writer id; deletes are versions; stamps clamped to the server's clock).
--
-- Installs (idempotent: CREATE OR REPLACE + role-checking DO blocks; one transaction; needs the
-- schema and tables of 003_row_state.sql, which `init --upstream` installs in the same run):
--
--   public.centrovision_sync_apply(changes jsonb, writer text) RETURNS jsonb
--   public.centrovision_sync_apply(changes jsonb)               -- contract 2's signature: raises
--                                                                 -- a clear "upgrade" error
--
-- Called as `SELECT public.centrovision_sync_apply($1::jsonb, $2)` or via PostgREST as
-- `POST /rest/v1/rpc/centrovision_sync_apply` with body {"changes": [...], "writer": "..."}.
--
-- `writer` is the clinic's id ([sync] clinic_id); not empty, not "legacy", not "cloud:…" (those
-- name the other writers).  `changes` is a JSON array of elements
--   {"i": int (caller's index), "s": schema (default "public"), "t": table,
--    "op": "upsert" | "delete" | "truncate",
--    "e": int, "l": "X/Y", "n": int  -- the change's commit position at the writer: capture epoch,
--                                       commit LSN, ordinal inside the transaction (required)
--    "j": int (optional)              -- the writer's journal id of the change (its push order)
--    "b": int (optional)              -- version_id of the upstream version the writer last
--                                       downloaded for this row (tells an edit from a conflict)
--    "k": primary key as text (delete), "ts": local commit timestamptz text (delete, truncate),
--    "row": {"col": value, ...} (upsert; must contain the PK column and "updated_at")}
-- Values follow jsonb_populate_record rules (strings go through the column type's input function,
-- json/jsonb columns take the JSON value as is).  A column ABSENT from "row" is left untouched by
-- an update and left to its default by an insert.  Keys naming generated columns are ignored
-- (never written); keys naming no column reject the element (42703).
--
-- Semantics: each element is a version of one row (truncate: of every row of its table), decided
-- against the row's current version in centrovision_sync.row_version (a row with none counts as
-- writer "legacy" stamped with its updated_at); on equal stamps between writers a delete wins, then
-- the higher writer id:
--   applied  the element won: the row is written (upsert) or removed (delete), and its version
--            (writer, position, clamped stamp, tombstone flag) recorded in the same transaction;
--   kept     the element lost (the loss goes to centrovision_sync.conflict, and the winner is
--            re-emitted into the change feed so this writer downloads it), or it is this writer's
--            own change at or before the position upstream already has (a re-send: no-op).
--   truncate deletes every row whose current version the truncate beats, leaving tombstones.
--            A truncate is a barrier for its table: earlier elements of that table take effect
--            before it, later ones after it.  (Upsert/delete need exactly one PK column.)
-- Rows being decided are locked first (FOR UPDATE on the table's rows, then a transaction
-- advisory lock per key, in key-hash order), so concurrent clinics and the cloud app decide one
-- after the other, never from the same stale version.
-- Elements are grouped per (table, truncate-segment, op, set of row keys) and each group is
-- decided and written with set-based statements inside a subtransaction.  If a group fails, it
-- is split (bisection, then row by row for pieces of <= 8, always in array order), so exactly the
-- failing elements are rejected with their SQLSTATE/message/detail/hint (detail and hint
-- truncated to 1000 chars) and all others apply.  Statement-level errors (classes 0A, 3D, 3F, 42
-- except 42501, and 55000) reject the whole group at once without bisecting.  Transient or
-- transaction-level errors (classes 08, 25, 40, 53, 57, 58, XX, and 55P03/55006) are NOT turned
-- into rejections: they abort the whole call so the caller retries the batch.  Unknown table
-- (42P01), not a table (42809), no single-column PK (0A000), no usable updated_at column
-- (42703/42804), unknown row key (42703, message names column and table), row without the PK
-- (22023): the whole group is rejected up front.
--
-- The caller guarantees at most one upsert/delete per (table, pk) per truncate-segment; if that
-- is violated the duplicates are detected and applied one by one in array order.
--
-- After the elements, centrovision_sync.writer_progress[writer] moves to the call's highest
-- (epoch, journal id) (the change feed reports it back: "upstream has processed your changes up to
-- here").
--
-- Writes run with `SET LOCAL session_replication_role = replica` (plain statement: on Supabase
-- supautils only allows it that way, not via set_config() or a function SET clause), so ordinary
-- triggers (e.g. updated_at = now() stampers, and centrovision_sync.record_write, which records
-- other writers' versions) and FK checks/cascades do not fire; the previous value is restored
-- before returning.
--
-- Result: {"applied":[i...], "kept":[i...], "clamped":[i...],
--          "rejected":[{"i":i, "code":"SQLSTATE", "message":"...", "detail":"...", "hint":"..."}]}
-- (detail/hint only when present; every input element appears exactly once in applied, kept or
-- rejected; "clamped" lists elements whose stamp was too far ahead of the server's clock).
-- Malformed elements (not an object, missing/invalid "i", "t", "op", "e", "l", "n", unknown op,
-- missing "row"/"k"/"ts") are rejected with 22023 ("i" echoed as given, null if absent).  A
-- non-array `changes` or an invalid `writer` raises 22023.
--
-- Security: SECURITY DEFINER (owner: the installing role, `postgres` on Supabase) with
-- search_path = ''; EXECUTE revoked from PUBLIC/anon/authenticated, granted to service_role.
-- It writes ONLY to the tables this project syncs, centrovision_sync.synced_table
-- (003_row_state.sql: filled by `init --upstream` from [sync] tables in the [supabase] schema):
-- a call naming any other table ("s"."t" of a well-formed element: auth.users, storage.objects,
-- an unlisted table of the synced schema) raises 42501 before anything is written, naming the
-- tables and the fix (add it to [sync] tables, run `init --upstream`).  The caller keeps its
-- changes queued and retries after the fix; one lookup per distinct table of the call.
-- Tables in pg_* schemas, information_schema and centrovision_sync are never registered, and
-- refused again per element (42501) should a row for one appear there.

BEGIN;

-- Contract 2's signature: an older service gets a clear error instead of writes that skip the
-- per-row sync state.
CREATE OR REPLACE FUNCTION public.centrovision_sync_apply(changes jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
  RAISE EXCEPTION USING
    ERRCODE = '0A000',
    MESSAGE = 'this Supabase project runs a newer centrovision-sync upstream contract; this clinic''s service is too old to write to it',
    HINT = 'upgrade centrovision-sync on this clinic server (its changes stay queued in _sync_pending meanwhile)';
END
$fn$;

CREATE OR REPLACE FUNCTION public.centrovision_sync_apply(changes jsonb, writer text)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = ''
AS $fn$
#variable_conflict use_column
DECLARE
  v_prev_srr   text;
  v_prev_plan  text[];
  v_reemit     text[];
  v_k          text;
  v_applied    int[]   := '{}';
  v_kept       int[]   := '{}';
  v_rej        jsonb[] := '{}';
  g            record;
  v_tab        text;
  v_code       text;
  v_msg        text;
  v_hint       text;
  v_sql        text;
  -- per-group column info
  v_coldefs    text;
  v_collist    text;
  v_sel_r      text;
  v_sel_src    text;
  v_set_ex     text;
  v_set_src    text;
  v_override   text;
  v_npresent   int;
  v_unknown    text[];
  -- execution / bisection
  v_n          int;
  v_lo         int;
  v_hi         int;
  v_mid        int;
  v_stack_lo   int[];
  v_stack_hi   int[];
  v_rows       jsonb;
  v_os         int[];
  v_path       text;
  v_state      text;
  v_emsg       text;
  v_edetail    text;
  v_ehint      text;
  -- conflict rule
  v_skew       double precision;
  v_lock       text;
  v_clog       text;
  v_has        boolean[];
  v_dst        timestamptz[];
  v_es         int[];
  v_ls         text[];
  v_ns         int[];
  v_bs         bigint[];
  v_s          text;
  v_t          text;
  v_op         text;
  v_conf       jsonb;
  v_ids        int[];
  v_keys       text[];
  v_sts        text[];
  v_win        int[];
  v_lost       int[];
  v_clamp      int[];
  v_clamped    int[]   := '{}';
  v_wrows      jsonb;
  v_n_side     bigint;
  v_trunc_ts   timestamptz;
  v_refused    text;
BEGIN
  IF writer IS NULL OR writer = '' OR writer = 'legacy' OR writer LIKE 'cloud:%' THEN
    RAISE EXCEPTION USING
      ERRCODE = '22023',
      MESSAGE = pg_catalog.format('centrovision_sync_apply: invalid writer %L', writer),
      HINT = 'the writer is the clinic''s [sync] clinic_id: not empty, not "legacy", not starting with "cloud:"';
  END IF;
  IF changes IS NULL OR pg_catalog.jsonb_typeof(changes) <> 'array' THEN
    RAISE EXCEPTION USING
      ERRCODE = '22023',
      MESSAGE = pg_catalog.format(
        'centrovision_sync_apply: "changes" must be a JSON array of change elements, got %s',
        coalesce(pg_catalog.jsonb_typeof(changes), 'SQL NULL')),
      HINT = 'SELECT public.centrovision_sync_apply(''[...]''::jsonb), or POST /rest/v1/rpc/centrovision_sync_apply with body {"changes": [...]}';
  END IF;
  IF pg_catalog.jsonb_array_length(changes) = 0 THEN
    RETURN '{"applied": [], "kept": [], "rejected": []}'::jsonb;
  END IF;

  -- Only the tables this project syncs (see the header): one lookup per distinct table named by
  -- the call, before anything is written.  (jsonb_to_recordset reads only "s" and "t" of each
  -- element; an element that is not an object makes it fail, then the objects are read one by one.)
  BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', q.s, q.t), ', ' ORDER BY q.s, q.t)
    INTO v_refused
    FROM (SELECT DISTINCT coalesce(x.s, 'public') AS s, x.t
          FROM pg_catalog.jsonb_to_recordset(changes) AS x(s text, t text)) AS q
    WHERE q.t <> '' AND q.s <> ''
      AND NOT EXISTS (SELECT 1 FROM centrovision_sync.synced_table AS st
                      WHERE st.schema_name = q.s AND st.table_name = q.t);
  EXCEPTION WHEN invalid_parameter_value THEN
    SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', q.s, q.t), ', ' ORDER BY q.s, q.t)
    INTO v_refused
    FROM (SELECT DISTINCT coalesce(e->>'s', 'public') AS s, e->>'t' AS t
          FROM pg_catalog.jsonb_array_elements(changes) AS e
          WHERE pg_catalog.jsonb_typeof(e) = 'object') AS q
    WHERE q.t <> '' AND q.s <> ''
      AND NOT EXISTS (SELECT 1 FROM centrovision_sync.synced_table AS st
                      WHERE st.schema_name = q.s AND st.table_name = q.t);
  END;
  IF v_refused IS NOT NULL THEN
    RAISE EXCEPTION USING
      ERRCODE = '42501',
      MESSAGE = pg_catalog.format(
        'centrovision_sync_apply: %s is not a table this project syncs; nothing was written', v_refused),
      DETAIL = 'the sync functions write only to the tables registered by init --upstream (centrovision_sync.synced_table)',
      HINT = 'if it should be synced, add it to [sync] tables in config.toml (its schema is [supabase] schema) and run `centrovision-sync init --upstream`, or paste `init --print-upstream-sql` into the Supabase SQL editor';
  END IF;

  -- No ordinary triggers (updated_at stampers), no FK checks: plain statement, see header.
  SELECT st.value::double precision INTO v_skew
  FROM centrovision_sync.settings st WHERE st.key = 'max_clock_skew_seconds';
  v_skew := coalesce(v_skew, 300);

  v_prev_srr := pg_catalog.current_setting('session_replication_role');
  SET LOCAL session_replication_role = replica;

  FOR g IN
    WITH el AS MATERIALIZED (
      -- one pass over the elements, validating their shape; keeps only small per-element values
      -- (the row data stays in `changes` and is picked out by array index per group later)
      SELECT a.o::int AS o, f.i AS ij, coalesce(f.s, 'public') AS s, f.t, f.op, f.k, f.ts,
             f.e, f.l, f.n, f.b,
             -- key set of an upsert's row; jsonb keeps object keys in a canonical order, so equal
             -- key sets give equal arrays
             CASE WHEN f.op = 'upsert' AND pg_catalog.jsonb_typeof(f."row") = 'object'
                  THEN ARRAY(SELECT pg_catalog.jsonb_object_keys(f."row")) END AS keys,
             CASE
               WHEN pg_catalog.jsonb_typeof(a.e) <> 'object' THEN
                 pg_catalog.format('element at array position %s is not a JSON object', a.o)
               WHEN pg_catalog.jsonb_typeof(f.i) IS DISTINCT FROM 'number' THEN
                 '"i" (caller index) is missing or not a JSON number'
               WHEN (f.i)::numeric % 1 <> 0 OR (f.i)::numeric NOT BETWEEN -2147483648 AND 2147483647 THEN
                 '"i" (caller index) must be a 32-bit integer'
               WHEN f.t IS NULL OR f.t = '' THEN
                 '"t" (table name) is missing or empty'
               WHEN f.s = '' THEN
                 '"s" (schema name) must not be empty (omit it for "public")'
               WHEN f.op IS NULL THEN
                 '"op" is missing (expected "upsert", "delete" or "truncate")'
               WHEN f.op NOT IN ('upsert', 'delete', 'truncate') THEN
                 pg_catalog.format('unknown op "%s" (expected "upsert", "delete" or "truncate")', f.op)
               WHEN f.e IS NULL OR f.l IS NULL OR f.n IS NULL THEN
                 '"e", "l" and "n" (the change''s epoch, commit LSN and ordinal at the writer) are required'
               WHEN f.op = 'upsert' AND pg_catalog.jsonb_typeof(f."row") IS DISTINCT FROM 'object' THEN
                 '"row" is missing or not a JSON object (required for upsert)'
               WHEN f.op = 'upsert'
                    AND coalesce(pg_catalog.jsonb_typeof(f."row"->'updated_at'), 'null') = 'null' THEN
                 '"row" must contain a non-null "updated_at"'
               WHEN f.op = 'delete' AND f.k IS NULL THEN
                 '"k" (primary key value as text) is missing or null (required for delete)'
               WHEN f.op IN ('delete', 'truncate') AND f.ts IS NULL THEN
                 '"ts" (local commit timestamptz as text) is missing or null (required for delete and truncate)'
             END AS err
      FROM pg_catalog.jsonb_array_elements(changes) WITH ORDINALITY AS a(e, o)
      CROSS JOIN LATERAL pg_catalog.jsonb_to_record(
             CASE WHEN pg_catalog.jsonb_typeof(a.e) = 'object' THEN a.e ELSE '{}' END)
             AS f(i jsonb, s text, t text, op text, k text, ts text, e int, l pg_catalog.pg_lsn, n int, b bigint,
                "row" jsonb)
    ), seg AS MATERIALIZED (
      -- sk: position relative to this table's truncates (2n = after n truncates, 2n+1 = truncate n+1)
      SELECT el.o, (el.ij)::numeric::int AS i, el.s COLLATE "C" AS s, el.t COLLATE "C" AS t,
             el.op COLLATE "C" AS op, el.k, el.ts, el.e, el.l::text AS l, el.n, el.b,
             el.keys COLLATE "C" AS keys,
             2 * coalesce(count(*) FILTER (WHERE el.op = 'truncate') OVER w, 0)
               + (el.op = 'truncate')::int AS sk
      FROM el
      WHERE el.err IS NULL
      WINDOW w AS (PARTITION BY el.s, el.t ORDER BY el.o
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ), grp AS (
      SELECT sg.s, sg.t, sg.op, sg.sk, sg.keys, min(sg.o) AS first_o,
             array_agg(sg.o ORDER BY sg.o) AS os,
             array_agg(sg.i ORDER BY sg.o) AS ids,
             array_agg(sg.k ORDER BY sg.o) FILTER (WHERE sg.op = 'delete') AS ks,
             array_agg(sg.ts ORDER BY sg.o) FILTER (WHERE sg.op <> 'upsert') AS tss,
             array_agg(sg.e ORDER BY sg.o) AS es, array_agg(sg.l ORDER BY sg.o) AS ls,
             array_agg(sg.n ORDER BY sg.o) AS ns, array_agg(sg.b ORDER BY sg.o) AS bs
      FROM seg sg
      GROUP BY sg.s, sg.t, sg.op, sg.sk, sg.keys
    ), tabs AS (
      SELECT DISTINCT gr.s, gr.t FROM grp gr
    ), meta AS (
      -- catalog lookup, once per table and call
      SELECT tb.s, tb.t, c.oid AS relid, c.relkind::text AS relkind,
             coalesce(pk.npk, 0) AS npk, pk.pk, pk.pktype, pk.pk_immediate,
             col.cols, col.ncols, col.ua_typid, col.ua_gen
      FROM tabs tb
      LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = tb.s
      LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = tb.t
      LEFT JOIN LATERAL (
        SELECT count(*)::int AS npk, min(a.attname::text) AS pk,
               min(pg_catalog.format_type(a.atttypid, a.atttypmod)) AS pktype,
               bool_and(x.indimmediate) AS pk_immediate
        FROM pg_catalog.pg_index x
        JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
        WHERE x.indrelid = c.oid AND x.indisprimary
      ) pk ON true
      LEFT JOIN LATERAL (
        SELECT pg_catalog.jsonb_object_agg(a.attname::text, pg_catalog.jsonb_build_object(
                 't', pg_catalog.format_type(a.atttypid, a.atttypmod),
                 'g', a.attgenerated <> '',
                 'a', a.attidentity = 'a')) AS cols,
               count(*) FILTER (WHERE a.attgenerated = '')::int AS ncols,
               min(a.atttypid) FILTER (WHERE a.attname = 'updated_at') AS ua_typid,
               bool_or(a.attgenerated <> '') FILTER (WHERE a.attname = 'updated_at') AS ua_gen
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      ) col ON true
    )
    SELECT 0 AS kind, NULL::text AS s, NULL::text AS t, NULL::text AS op, 0 AS sk, 0 AS first_o,
           NULL::text[] AS keys, NULL::int[] AS os, NULL::int[] AS ids, NULL::text[] AS ks,
           NULL::text[] AS tss, NULL::int[] AS es, NULL::text[] AS ls, NULL::int[] AS ns,
           NULL::bigint[] AS bs, NULL::oid AS relid, NULL::text AS relkind, 0 AS npk,
           NULL::text AS pk, NULL::text AS pktype, NULL::boolean AS pk_immediate,
           NULL::jsonb AS cols, 0 AS ncols,
           NULL::oid AS ua_typid, NULL::boolean AS ua_gen,
           (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'i', el.ij, 'code', '22023', 'message', el.err) ORDER BY el.o)
            FROM el WHERE el.err IS NOT NULL) AS bad
    UNION ALL
    SELECT 1, gr.s, gr.t, gr.op, gr.sk, gr.first_o, gr.keys, gr.os, gr.ids, gr.ks, gr.tss,
           gr.es, gr.ls, gr.ns, gr.bs,
           m.relid, m.relkind, m.npk, m.pk, m.pktype, m.pk_immediate, m.cols, m.ncols, m.ua_typid,
           m.ua_gen, NULL
    FROM grp gr
    JOIN meta m ON m.s = gr.s AND m.t = gr.t
    ORDER BY 1, 2, 3, 5, 6
  LOOP
    IF g.kind = 0 THEN
      IF g.bad IS NOT NULL THEN
        v_rej := v_rej || ARRAY(SELECT pg_catalog.jsonb_array_elements(g.bad));
      END IF;
      CONTINUE;
    END IF;

    v_tab  := pg_catalog.format('%I.%I', g.s, g.t);
    v_s    := g.s;
    v_t    := g.t;
    v_op   := g.op;
    v_code := NULL;
    v_hint := NULL;

    -- table-level checks: reject the whole group with one message
    IF g.s = 'information_schema' OR g.s LIKE 'pg\_%' OR g.s = 'centrovision_sync' THEN
      v_code := '42501';
      v_msg  := pg_catalog.format('centrovision sync does not write to system schema %I', g.s);
    ELSIF g.relid IS NULL THEN
      v_code := '42P01';
      v_msg  := pg_catalog.format('upstream table %s does not exist', v_tab);
      v_hint := 'Create the table upstream (run the schema migration) before syncing it.';
    ELSIF g.relkind NOT IN ('r', 'p') THEN
      v_code := '42809';
      v_msg  := pg_catalog.format('upstream relation %s is not a table', v_tab);
    ELSIF g.ua_typid IS NULL THEN
      v_code := '42703';
      v_msg  := pg_catalog.format('column "updated_at" does not exist in upstream table %s', v_tab);
    ELSIF g.ua_typid NOT IN ('timestamptz'::pg_catalog.regtype, 'timestamp'::pg_catalog.regtype)
          OR g.ua_gen THEN
      v_code := '42804';
      v_msg  := pg_catalog.format('column "updated_at" of upstream table %s must be a plain timestamptz column', v_tab);
    ELSIF g.op <> 'truncate' AND g.npk <> 1 THEN
      v_code := '0A000';
      v_msg  := pg_catalog.format(
        'upstream table %s has %s primary key columns; centrovision sync requires exactly one',
        v_tab, g.npk);
    ELSIF g.op = 'upsert' THEN
      SELECT
        string_agg(pg_catalog.format('%I %s', k.n, g.cols->k.n->>'t'), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE),
        string_agg(pg_catalog.format('%I', k.n), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE),
        string_agg(pg_catalog.format('r.%I', k.n), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE),
        string_agg(pg_catalog.format('src.%I', k.n), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE),
        string_agg(pg_catalog.format('%1$I = EXCLUDED.%1$I', k.n), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE AND k.n <> g.pk
                  AND (g.cols->k.n->>'a')::boolean IS FALSE),
        string_agg(pg_catalog.format('%1$I = src.%1$I', k.n), ', ' ORDER BY k.o)
          FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE AND k.n <> g.pk
                  AND (g.cols->k.n->>'a')::boolean IS FALSE),
        CASE WHEN bool_or((g.cols->k.n->>'a')::boolean) THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
        count(*) FILTER (WHERE (g.cols->k.n->>'g')::boolean IS FALSE),
        array_agg(k.n ORDER BY k.o) FILTER (WHERE g.cols->k.n IS NULL)
      INTO v_coldefs, v_collist, v_sel_r, v_sel_src, v_set_ex, v_set_src, v_override,
           v_npresent, v_unknown
      FROM unnest(g.keys) WITH ORDINALITY AS k(n, o);

      IF v_unknown IS NOT NULL THEN
        v_code := '42703';
        IF cardinality(v_unknown) = 1 THEN
          v_msg := pg_catalog.format('column "%s" does not exist in upstream table %s',
                                     v_unknown[1], v_tab);
        ELSE
          v_msg := pg_catalog.format('columns %s do not exist in upstream table %s',
                     (SELECT string_agg('"' || u || '"', ', ') FROM unnest(v_unknown) u), v_tab);
        END IF;
        v_hint := 'Add the column upstream (run the schema migration) before syncing it.';
      ELSIF NOT (g.pk = ANY (g.keys)) THEN
        v_code := '22023';
        v_msg  := pg_catalog.format('"row" must contain the primary key column "%s" of upstream table %s',
                                    g.pk, v_tab);
      END IF;
    END IF;

    IF v_code IS NOT NULL THEN
      v_rej := v_rej || ARRAY(
        SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                 'i', x, 'code', v_code, 'message', v_msg, 'hint', v_hint))
        FROM unnest(g.ids) AS x);
      CONTINUE;
    END IF;

    -- the statements for this group that name its table (see the header): the lock, and the
    -- conflict log (built when needed, below); the decision itself is static SQL
    -- (a truncate has its own single statement below and may have no primary key)
    IF g.op <> 'truncate' THEN
    -- Lock the rows that exist, in key order (against the cloud app's writes and other clinics),
    -- and read what the decision needs of them: whether the row exists and its updated_at, in
    -- the caller's order.  ($1: the keys as text.)
    v_lock := pg_catalog.format(
      'SELECT coalesce(array_agg(l.k IS NOT NULL ORDER BY o.p), ''{}''),'
      '       coalesce(array_agg(l.u ORDER BY o.p), ''{}'')'
      ' FROM (SELECT u.k, u.p FROM unnest($1::text[]) WITH ORDINALITY AS u(k, p)'
      '       ORDER BY u.k::%3$s) AS o'
      ' LEFT JOIN LATERAL (SELECT d.%2$I AS k, d.updated_at::pg_catalog.timestamptz AS u'
      '                    FROM %1$s AS d WHERE d.%2$I = o.k::%3$s FOR UPDATE) AS l ON true',
      v_tab, g.pk, g.pktype);
    END IF;

    IF g.op = 'upsert' AND v_npresent = g.ncols AND g.pk_immediate THEN
      -- full rows: single INSERT ... ON CONFLICT DO UPDATE (duplicate keys raise 21000 -> bisect)
      v_sql := pg_catalog.format(
        'INSERT INTO %1$s AS d (%2$s) %3$s'
        ' SELECT %4$s FROM pg_catalog.jsonb_to_recordset($1) AS r(%5$s)'
        ' ON CONFLICT (%6$I) DO UPDATE SET %7$s',
        v_tab, v_collist, v_override, v_sel_r, v_coldefs, g.pk,
        coalesce(v_set_ex, pg_catalog.format('%1$I = d.%1$I', g.pk)));
    ELSIF g.op = 'upsert' THEN
      -- partial rows (absent columns): INSERT ... ON CONFLICT would check NOT NULL/CHECK on the
      -- default-filled insert tuple before detecting the conflict, so update existing rows and
      -- insert missing ones separately.  (Also used for a DEFERRABLE primary key, which ON
      -- CONFLICT cannot use as arbiter.)  UPDATE ... FROM would silently apply only one of two
      -- changes to the same key, so duplicate keys are turned into an error (-> bisect).
      v_sql := pg_catalog.format(
        'WITH src AS MATERIALIZED ('
        ' SELECT * FROM pg_catalog.jsonb_to_recordset($1) AS r(%5$s)), '
        'upd AS ('
        ' UPDATE %1$s AS d SET %7$s FROM src WHERE d.%6$I = src.%6$I RETURNING 1), '
        'ins AS ('
        ' INSERT INTO %1$s AS d (%2$s) %3$s'
        ' SELECT %4$s FROM src'
        ' WHERE NOT EXISTS (SELECT 1 FROM %1$s AS e WHERE e.%6$I = src.%6$I)'
        ' RETURNING 1) '
        'SELECT (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins) +'
        ' (SELECT CASE WHEN count(src.%6$I) = count(DISTINCT src.%6$I) THEN 0'
        '         ELSE (''duplicate primary key within one call: '' || count(*))::int END'
        '  FROM src)',
        v_tab, v_collist, v_override, v_sel_src, v_coldefs, g.pk,
        coalesce(v_set_src, pg_catalog.format('%1$I = d.%1$I', g.pk)));
    ELSIF g.op = 'delete' THEN
      v_sql := pg_catalog.format(
        'DELETE FROM %1$s AS d WHERE d.%2$I = ANY ($1::text[]::%3$s[])', v_tab, g.pk, g.pktype);
    ELSIF g.pk IS NULL THEN
      -- truncate of a table without a primary key (no per-row versions): rows not newer go
      v_sql := pg_catalog.format(
        'WITH del AS (DELETE FROM %1$s WHERE updated_at IS NULL OR updated_at <= $7::pg_catalog.timestamptz'
        ' RETURNING 1) SELECT count(*) FROM del', v_tab);
    ELSE
      -- truncate: every row whose current version the truncate beats goes, leaving a tombstone.
      -- $1 writer, $2 epoch, $3 LSN, $4 ordinal, $5 schema, $6 table, $7 clamped stamp
      v_sql := pg_catalog.format(
        'WITH c AS MATERIALIZED ('
        ' SELECT coalesce(d.%2$I::text, rv.pk) AS k, d.%2$I AS dk, rv.pk IS NOT NULL AS has_rv,'
        '        rv.writer AS cw, rv.epoch AS ce, rv.commit_lsn AS cl, rv.ordinal AS cn,'
        '        CASE WHEN rv.pk IS NOT NULL THEN rv.stamp ELSE d.updated_at END AS cst'
        ' FROM %1$s AS d FULL JOIN (SELECT v.* FROM centrovision_sync.row_version AS v'
        '                           WHERE v.schema_name = $5 AND v.table_name = $6 AND NOT v.deleted) AS rv'
        '   ON rv.pk = d.%2$I::text), '
        'w AS MATERIALIZED ('
        ' SELECT c.* FROM c WHERE CASE'
        '   WHEN c.has_rv AND c.cw = $1 THEN ROW($2::int, $3::pg_catalog.pg_lsn, $4::int) > ROW(c.ce, c.cl, c.cn)'
        '   ELSE $7::pg_catalog.timestamptz >= coalesce(c.cst, ''-infinity'') END), '
        'del AS (DELETE FROM %1$s AS d USING w WHERE d.%2$I = w.dk RETURNING 1), '
        'rec AS ('
        ' INSERT INTO centrovision_sync.row_version AS v (schema_name, table_name, pk, writer, epoch,'
        '   commit_lsn, ordinal, stamp, deleted, version_id)'
        ' SELECT $5, $6, w.k, $1, $2, $3::pg_catalog.pg_lsn, $4, $7::pg_catalog.timestamptz, true,'
        '        pg_catalog.nextval(''centrovision_sync.version_seq'') FROM w'
        ' ON CONFLICT (schema_name, table_name, pk) DO UPDATE SET writer = EXCLUDED.writer,'
        '   epoch = EXCLUDED.epoch, commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal,'
        '   stamp = EXCLUDED.stamp, deleted = true, version_id = EXCLUDED.version_id,'
        '   xid = pg_catalog.pg_current_xact_id(), recorded_at = pg_catalog.now()'
        ' RETURNING 1) '
        'SELECT (SELECT count(*) FROM del) + (SELECT count(*) FROM rec)',
        v_tab, g.pk);
    END IF;

    -- run it: whole group first; on failure bisect (array order preserved), row by row when small
    v_n := cardinality(g.ids);
    v_stack_lo := ARRAY[1];
    v_stack_hi := ARRAY[v_n];

    WHILE cardinality(v_stack_lo) > 0 LOOP
      v_lo := v_stack_lo[cardinality(v_stack_lo)];
      v_hi := v_stack_hi[cardinality(v_stack_hi)];
      v_stack_lo := pg_catalog.trim_array(v_stack_lo, 1);
      v_stack_hi := pg_catalog.trim_array(v_stack_hi, 1);
      BEGIN
        v_ids := g.ids[v_lo:v_hi];
        IF g.op = 'truncate' THEN
          v_trunc_ts := (g.tss[1])::pg_catalog.timestamptz;
          IF v_trunc_ts > pg_catalog.now() + pg_catalog.make_interval(secs => v_skew) THEN
            v_trunc_ts := pg_catalog.now();
            v_clamp := v_ids;
          ELSE
            v_clamp := '{}';
          END IF;
          EXECUTE pg_catalog.format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', v_tab);
          EXECUTE v_sql INTO v_n_side
            USING writer, g.es[1], g.ls[1], g.ns[1], g.s, g.t, v_trunc_ts;
          v_win  := ARRAY[1];
          v_lost := '{}';
        ELSE
          IF g.op = 'upsert' THEN
            -- the rows of elements os[lo..hi], picked out of `changes` by a jsonpath of index ranges
            v_os := g.os[v_lo:v_hi];
            IF v_os[cardinality(v_os)] - v_os[1] + 1 = cardinality(v_os) THEN
              v_path := pg_catalog.format('$[%s to %s]."row"', v_os[1] - 1, v_os[cardinality(v_os)] - 1);
            ELSE
              SELECT '$[' || string_agg(CASE WHEN r.lo = r.hi THEN r.lo::text ELSE r.lo || ' to ' || r.hi END,
                                        ',' ORDER BY r.lo) || ']."row"'
              INTO v_path
              FROM (SELECT min(q.o) - 1 AS lo, max(q.o) - 1 AS hi
                    FROM (SELECT u.o, u.o - row_number() OVER (ORDER BY u.o) AS island
                          FROM unnest(v_os) AS u(o)) AS q
                    GROUP BY q.island) AS r;
            END IF;
            v_rows := pg_catalog.jsonb_path_query_array(changes, v_path::pg_catalog.jsonpath);
            SELECT array_agg(q.r->>g.pk ORDER BY q.o), array_agg(q.r->>'updated_at' ORDER BY q.o)
            INTO v_keys, v_sts
            FROM pg_catalog.jsonb_array_elements(v_rows) WITH ORDINALITY AS q(r, o);
          ELSE
            v_rows := NULL;
            v_keys := g.ks[v_lo:v_hi];
            v_sts  := g.tss[v_lo:v_hi];
          END IF;
          -- lock: the rows that exist (against the cloud app's writes), then every key (against
          -- other clinics, also for keys with no row), always in one order
          -- Key lookups by index, whatever the statistics say: row_version (and a table being
          -- uploaded) grows by thousands of rows between autovacuum's analyses, and a plan made
          -- for "one row" compares every key with every version (quadratic in the batch).
          v_prev_plan := ARRAY[pg_catalog.current_setting('enable_seqscan'),
                               pg_catalog.current_setting('enable_hashjoin'),
                               pg_catalog.current_setting('enable_mergejoin')];
          PERFORM pg_catalog.set_config('enable_seqscan', 'off', true),
                  pg_catalog.set_config('enable_hashjoin', 'off', true),
                  pg_catalog.set_config('enable_mergejoin', 'off', true);
          EXECUTE v_lock INTO v_has, v_dst USING v_keys;
          PERFORM pg_catalog.pg_advisory_xact_lock(q.h)
          FROM (SELECT DISTINCT pg_catalog.hashtextextended(v_tab || ':' || k.k, 0) AS h
                FROM unnest(v_keys) AS k(k) ORDER BY 1) AS q;
          v_es := g.es[v_lo:v_hi];
          v_ls := g.ls[v_lo:v_hi];
          v_ns := g.ns[v_lo:v_hi];
          v_bs := g.bs[v_lo:v_hi];
          -- Decide each element against the row's current version, record the winners' versions
          -- (and a version for a row that had none and won against an incoming change).  Static
          -- SQL, so its plan is made once per session (it names no app table: what it needs of
          -- the rows came from the lock above).  Returns (positions that won, i's kept, i's
          -- clamped, side-effect count, keys to re-emit, conflict records for the log).
          WITH x AS (
            SELECT u.p::int AS p, u.i, u.k, u.e, u.l::pg_catalog.pg_lsn AS l, u.n, u.b,
                   u.st::pg_catalog.timestamptz AS st_raw, u.hr, u.du
            FROM unnest(v_ids, v_keys, v_es, v_ls, v_ns, v_bs, v_sts, v_has, v_dst)
                 WITH ORDINALITY AS u(i, k, e, l, n, b, st, hr, du, p)
          ), y AS (
            SELECT x.*, x.st_raw > pg_catalog.now() + pg_catalog.make_interval(secs => v_skew) AS clamped,
                   rv.pk IS NOT NULL AS has_rv, rv.writer AS cw, rv.epoch AS ce, rv.commit_lsn AS cl,
                   rv.ordinal AS cn, rv.version_id AS cv, x.hr AS has_row,
                   coalesce(rv.deleted, NOT x.hr) AS cdel,
                   CASE WHEN rv.pk IS NOT NULL THEN rv.stamp ELSE x.du END AS cst
            FROM x
            -- one primary-key probe per element (LATERAL + LIMIT keeps the planner from turning
            -- this into a scan of the table's versions when its statistics are stale)
            LEFT JOIN LATERAL (SELECT r.* FROM centrovision_sync.row_version AS r
                               WHERE r.schema_name = v_s AND r.table_name = v_t AND r.pk = x.k
                               LIMIT 1) AS rv ON true
          ), z AS MATERIALIZED (
            SELECT y.*, s.st,
                   CASE
                     WHEN NOT y.has_rv AND NOT y.has_row THEN 'new'
                     WHEN y.has_rv AND y.cw = centrovision_sync_apply.writer THEN
                       CASE WHEN ROW(y.e, y.l, y.n) > ROW(y.ce, y.cl, y.cn) THEN 'next' ELSE 'seen' END
                     WHEN s.st > coalesce(y.cst, '-infinity')
                       OR (s.st = y.cst AND (v_op = 'delete') > y.cdel)
                       OR (s.st = y.cst AND (v_op = 'delete') = y.cdel
                           AND centrovision_sync_apply.writer COLLATE "C" > coalesce(y.cw, 'legacy') COLLATE "C")
                       THEN CASE WHEN y.has_rv THEN 'win' ELSE 'legacy' END
                     ELSE 'lose' END AS verdict,
                   CASE WHEN s.st = y.cst AND (v_op = 'delete') <> y.cdel THEN 'equal stamps: the delete wins'
                        WHEN s.st = y.cst THEN 'equal stamps: higher writer id wins'
                        ELSE 'later updated_at wins' END AS rule
            FROM y CROSS JOIN LATERAL
              (SELECT CASE WHEN y.clamped THEN pg_catalog.now() ELSE y.st_raw END AS st) AS s
          ), legacy AS (
            -- a row with no version that won against an incoming change keeps a version of its own
            INSERT INTO centrovision_sync.row_version (schema_name, table_name, pk, writer, stamp, version_id)
            SELECT v_s, v_t, z.k, 'legacy', z.cst, pg_catalog.nextval('centrovision_sync.version_seq')
            FROM z WHERE z.verdict = 'lose' AND NOT z.has_rv
            ON CONFLICT DO NOTHING RETURNING 1
          ), rec AS (
            INSERT INTO centrovision_sync.row_version AS v (schema_name, table_name, pk, writer, epoch,
              commit_lsn, ordinal, stamp, deleted, version_id)
            SELECT v_s, v_t, z.k, centrovision_sync_apply.writer, z.e, z.l, z.n, z.st, v_op = 'delete',
                   pg_catalog.nextval('centrovision_sync.version_seq')
            FROM z WHERE z.verdict IN ('new', 'next', 'win', 'legacy') ORDER BY z.p
            ON CONFLICT (schema_name, table_name, pk) DO UPDATE SET writer = EXCLUDED.writer,
              epoch = EXCLUDED.epoch, commit_lsn = EXCLUDED.commit_lsn, ordinal = EXCLUDED.ordinal,
              stamp = EXCLUDED.stamp, deleted = EXCLUDED.deleted, version_id = EXCLUDED.version_id,
              xid = pg_catalog.pg_current_xact_id(), recorded_at = pg_catalog.now()
            RETURNING 1
          )
          SELECT coalesce(array_agg(z.p ORDER BY z.p) FILTER (WHERE z.verdict IN ('new', 'next', 'win', 'legacy')), '{}'),
                 coalesce(array_agg(z.i ORDER BY z.p) FILTER (WHERE z.verdict IN ('lose', 'seen')), '{}'),
                 coalesce(array_agg(z.i ORDER BY z.p) FILTER (WHERE z.clamped), '{}'),
                 (SELECT count(*) FROM legacy) + (SELECT count(*) FROM rec),
                 -- the keys whose winning version is re-emitted into the feed (see below)
                 coalesce(array_agg(z.k) FILTER (WHERE z.verdict = 'lose' AND z.has_rv), '{}'),
                 -- an incoming version that lost; another writer's version replaced by one whose
                 -- writer had not downloaded it (a delete meeting a delete is no conflict)
                 pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'p', z.p, 'k', z.k, 'cw', coalesce(z.cw, 'legacy'), 'cst', z.cst, 'cdel', z.cdel,
                   'st', z.st, 'rule', z.rule, 'lost', z.verdict = 'lose') ORDER BY z.p)
                   FILTER (WHERE (z.verdict = 'lose' OR (z.verdict = 'win' AND z.cv IS DISTINCT FROM z.b))
                                 AND NOT (z.cdel AND v_op = 'delete'))
          INTO v_win, v_lost, v_clamp, v_n_side, v_reemit, v_conf
          FROM z;
          IF v_conf IS NOT NULL THEN
            -- Versions that lost, or that replaced another writer's version this writer had not
            -- downloaded, go to the conflict log with both images (rare: run only when the decision
            -- found some).  $1 the decision's conflict records, $2 the upsert rows (NULL for deletes),
            -- $3 schema, $4 table, $5 writer, $6 op.
            v_clog := pg_catalog.format(
              'INSERT INTO centrovision_sync.conflict (schema_name, table_name, pk, winner_writer,'
              '  winner_stamp, winner_deleted, winner_image, loser_writer, loser_stamp, loser_deleted,'
              '  loser_image, rule)'
              ' SELECT $3, $4, c.k,'
              '   CASE WHEN c.lost THEN c.cw ELSE $5 END, CASE WHEN c.lost THEN c.cst ELSE c.st END,'
              '   CASE WHEN c.lost THEN c.cdel ELSE $6 = ''delete'' END,'
              '   CASE WHEN c.lost THEN cur.img ELSE $2->(c.p - 1) END,'
              '   CASE WHEN c.lost THEN $5 ELSE c.cw END, CASE WHEN c.lost THEN c.st ELSE c.cst END,'
              '   CASE WHEN c.lost THEN $6 = ''delete'' ELSE c.cdel END,'
              '   CASE WHEN c.lost THEN $2->(c.p - 1) ELSE cur.img END, c.rule'
              ' FROM pg_catalog.jsonb_to_recordset($1) AS c(p int, k text, cw text, cst pg_catalog.timestamptz,'
              '      cdel boolean, st pg_catalog.timestamptz, rule text, lost boolean)'
              ' LEFT JOIN LATERAL (SELECT pg_catalog.to_jsonb(d.*) AS img FROM %1$s AS d'
              '                    WHERE d.%2$I = c.k::%3$s) AS cur ON true'
              ' ORDER BY c.p',
              v_tab, g.pk, g.pktype);
            EXECUTE v_clog USING v_conf, v_rows, g.s, g.t, writer, g.op;
          END IF;
          -- the winner of an element that lost is re-emitted into the feed (a new xid), so the
          -- losing writer downloads it; one primary-key update per key (losses are rare, and a
          -- set-based UPDATE ... FROM is planned as a scan of the table's versions on stale
          -- statistics)
          FOREACH v_k IN ARRAY v_reemit LOOP
            UPDATE centrovision_sync.row_version AS v SET xid = pg_catalog.pg_current_xact_id()
            WHERE v.schema_name = g.s AND v.table_name = g.t AND v.pk = v_k;
          END LOOP;
          PERFORM pg_catalog.set_config('enable_seqscan', v_prev_plan[1], true),
                  pg_catalog.set_config('enable_hashjoin', v_prev_plan[2], true),
                  pg_catalog.set_config('enable_mergejoin', v_prev_plan[3], true);
          IF cardinality(v_win) > 0 THEN
            IF g.op = 'upsert' AND cardinality(v_win) = cardinality(v_ids) THEN
              EXECUTE v_sql USING v_rows;  -- every element won (the usual case): no copy
            ELSIF g.op = 'upsert' THEN
              SELECT pg_catalog.jsonb_agg(q.r ORDER BY q.o) INTO v_wrows
              FROM pg_catalog.jsonb_array_elements(v_rows) WITH ORDINALITY AS q(r, o)
              WHERE q.o = ANY (v_win);
              EXECUTE v_sql USING v_wrows;
            ELSE
              EXECUTE v_sql USING ARRAY(SELECT v_keys[p] FROM unnest(v_win) AS p ORDER BY p);
            END IF;
          END IF;
        END IF;
        v_applied := v_applied || ARRAY(SELECT v_ids[p] FROM unnest(v_win) AS p ORDER BY p);
        v_kept    := v_kept || v_lost;
        v_clamped := v_clamped || v_clamp;
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS
          v_state   = RETURNED_SQLSTATE,
          v_emsg    = MESSAGE_TEXT,
          v_edetail = PG_EXCEPTION_DETAIL,
          v_ehint   = PG_EXCEPTION_HINT;
        IF left(v_state, 2) IN ('08', '25', '40', '53', '57', '58', 'XX')
           OR v_state IN ('55P03', '55006') THEN
          -- transient / transaction-level: fail the whole call, the caller retries the batch
          RAISE;
        END IF;
        IF v_lo = v_hi OR v_state = '55000'
           OR (left(v_state, 2) IN ('0A', '3D', '3F', '42') AND v_state <> '42501') THEN
          -- a single row, or a statement-level error (same for every row: no point bisecting)
          v_rej := v_rej || ARRAY(
            SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                     'i', x, 'code', v_state, 'message', v_emsg,
                     'detail', left(nullif(v_edetail, ''), 1000),
                     'hint', left(nullif(v_ehint, ''), 1000)))
            FROM unnest(g.ids[v_lo:v_hi]) AS x);
        ELSIF v_hi - v_lo < 8 THEN
          v_stack_lo := v_stack_lo || ARRAY(SELECT x FROM generate_series(v_hi, v_lo, -1) x);
          v_stack_hi := v_stack_hi || ARRAY(SELECT x FROM generate_series(v_hi, v_lo, -1) x);
        ELSE
          v_mid := (v_lo + v_hi) / 2;
          v_stack_lo := v_stack_lo || ARRAY[v_mid + 1, v_lo];
          v_stack_hi := v_stack_hi || ARRAY[v_hi, v_mid];
        END IF;
      END;
    END LOOP;
  END LOOP;

  -- what upstream has processed of this writer: the call's highest position
  INSERT INTO centrovision_sync.writer_progress AS w (writer, epoch, journal_id, commit_lsn)
  SELECT centrovision_sync_apply.writer, q.e, q.j, q.l
  FROM (SELECT (c->>'e')::int AS e, coalesce((c->>'j')::bigint, 0) AS j, (c->>'l')::pg_catalog.pg_lsn AS l
        FROM pg_catalog.jsonb_array_elements(changes) AS c
        WHERE pg_catalog.jsonb_typeof(c) = 'object' AND c ? 'e' AND c ? 'l'
        ORDER BY 1 DESC, 2 DESC, 3 DESC LIMIT 1) AS q
  ON CONFLICT (writer) DO UPDATE SET epoch = EXCLUDED.epoch, journal_id = EXCLUDED.journal_id,
    commit_lsn = EXCLUDED.commit_lsn, updated_at = pg_catalog.now()
  WHERE ROW(EXCLUDED.epoch, EXCLUDED.journal_id) > ROW(w.epoch, w.journal_id);

  -- restore the caller's value (SET LOCAL would otherwise last until the end of its transaction)
  IF v_prev_srr = 'origin' THEN
    SET LOCAL session_replication_role = 'origin';
  ELSIF v_prev_srr = 'local' THEN
    SET LOCAL session_replication_role = 'local';
  END IF;

  RETURN pg_catalog.jsonb_build_object(
    'applied',  coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM unnest(v_applied) x), '[]'::jsonb),
    'kept',     coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM unnest(v_kept) x), '[]'::jsonb),
    'clamped',  coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM unnest(v_clamped) x), '[]'::jsonb),
    'rejected', coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x->'i') FROM unnest(v_rej) x), '[]'::jsonb));
END
$fn$;

COMMENT ON FUNCTION public.centrovision_sync_apply(jsonb, text) IS
  'centrovision-sync: apply a batch of one clinic''s changes under the conflict rule (see sql/upstream/001_apply.sql, 003_row_state.sql)';

-- Privileges: only the service role may call it (Supabase grants EXECUTE on new functions in
-- public to anon/authenticated by default privileges, hence the explicit revokes).
-- (The contract-2 signature only raises the upgrade error; it gets the same privileges.)
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_apply(jsonb, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_apply(jsonb) FROM PUBLIC;

DO $do$
DECLARE
  r text;
  f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['public.centrovision_sync_apply(jsonb, text)', 'public.centrovision_sync_apply(jsonb)'] LOOP
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

-- Ask PostgREST to pick up the new/changed functions (delivered at COMMIT).
NOTIFY pgrst, 'reload schema';

COMMIT;
