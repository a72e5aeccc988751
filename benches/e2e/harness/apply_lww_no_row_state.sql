-- apply_lww_no_row_state.sql — BENCHMARK BASELINE FIXTURE. Never installed by the service
-- (`init --upstream` and `init --print-upstream-sql` use sql/upstream/ only); loaded by
-- benches/e2e/harness/mod.rs for the "push without per-row bookkeeping" variant of the
-- postgres-mode drain (figure 1, bookkeeping cost), and nowhere else.
--
-- What it is: the previous upstream contract's apply function (contract 2,
-- `git show 36391cc:sql/upstream/001_apply.sql`), body unchanged: last-write-wins on updated_at,
-- grouped set-based statements, bisection on errors.  It keeps NO per-row state: no
-- centrovision_sync.row_version, no conflict log, no writer_progress, no re-emitted winners.
-- Changes against that file, only so the current service accepts and calls it:
--   * the signature is contract 3's, `centrovision_sync_apply(changes jsonb, writer text)`;
--     `writer` is ignored, and so are the elements' new keys ("e", "l", "n", "j", "b");
--   * the contract-version function is not defined here: the bench installs the current one
--     (`upstream::contract_sql()`, returning CONTRACT_VERSION), so the service's version check
--     passes;
--   * COMMENT/REVOKE/GRANT name the new signature.
-- The bench installs sql/upstream/002_verify.sql and 003_row_state.sql before it (the down cycle
-- of `once` reads the change feed, which stays empty here) but not 001_apply.sql, and enrolls no
-- table: the triggers that record other writers' versions are NOT installed in this variant.
-- The original header follows, describing the semantics (contract 2).
--
-- 001_apply.sql — upstream (Supabase) side of centrovision-sync: batch apply with last-write-wins.
--
-- Installs two functions (idempotent: CREATE OR REPLACE + role-checking DO blocks; the whole file
-- runs in one transaction):
--
--   public.centrovision_sync_version() RETURNS integer     -- 1; bumped when the contract changes
--   public.centrovision_sync_apply(changes jsonb) RETURNS jsonb
--
-- Called as `SELECT public.centrovision_sync_apply($1::jsonb)` or via PostgREST as
-- `POST /rest/v1/rpc/centrovision_sync_apply` with body {"changes": [...]}.
--
-- `changes` is a JSON array of elements
--   {"i": int (caller's index), "s": schema (default "public"), "t": table,
--    "op": "upsert" | "delete" | "truncate",
--    "k": primary key as text (delete), "ts": local commit timestamptz text (delete, truncate),
--    "row": {"col": value, ...} (upsert; must contain the PK column and "updated_at")}
-- Values follow jsonb_populate_record rules (strings go through the column type's input function,
-- json/jsonb columns take the JSON value as is).  A column ABSENT from "row" is left untouched by
-- an update and left to its default by an insert.  Keys naming generated columns are ignored
-- (never written); keys naming no column reject the element (42703).
--
-- Semantics (last-write-wins on updated_at; an upstream row whose updated_at IS NULL counts as
-- older than anything):
--   upsert   : no row with that PK -> INSERT (applied); row exists -> UPDATE the columns present
--              only if existing.updated_at < row.updated_at (applied), else untouched (kept:
--              upstream newer or equal, upstream wins ties).
--   delete   : delete the row with PK = k if existing.updated_at <= ts (applied); existing row
--              with updated_at > ts stays (kept); no such row -> applied (idempotent).
--   truncate : DELETE FROM t WHERE updated_at <= ts (applied; newer rows stay).  A truncate is a
--              barrier for its table: earlier elements of that table take effect before it, later
--              ones after it.  (Truncate needs no primary key; upsert/delete need exactly one
--              PK column.)
-- Elements are grouped per (table, truncate-segment, op, set of row keys) and applied with one
-- set-based statement per group inside a subtransaction: full rows with INSERT ... ON CONFLICT
-- (pk) DO UPDATE ... WHERE d.updated_at < EXCLUDED.updated_at; rows with absent columns (or a
-- DEFERRABLE pk) with UPDATE ... FROM + INSERT ... WHERE NOT EXISTS, because ON CONFLICT checks
-- NOT NULL/CHECK on the default-filled insert tuple before it sees the conflict; deletes with
-- DELETE ... USING.  RETURNING tells applied from kept.  If a group's statement fails, the group
-- is split (bisection, then row by row for pieces of <= 8, always in array order), so exactly
-- the failing elements are rejected with their SQLSTATE/message/detail/hint (detail and hint
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
-- Writes run with `SET LOCAL session_replication_role = replica` (plain statement: on Supabase
-- supautils only allows it that way, not via set_config() or a function SET clause), so ordinary
-- triggers (e.g. updated_at = now() stampers) and FK checks/cascades do not fire; the previous
-- value is restored before returning.
--
-- Result: {"applied":[i...], "kept":[i...],
--          "rejected":[{"i":i, "code":"SQLSTATE", "message":"...", "detail":"...", "hint":"..."}]}
-- (detail/hint only when present; every input element appears exactly once).  Malformed elements
-- (not an object, missing/invalid "i", "t", "op", unknown op, missing "row"/"k"/"ts") are
-- rejected with 22023 ("i" echoed as given, null if absent).  A non-array `changes` raises 22023.
--
-- Security: SECURITY DEFINER (owner: the installing role, `postgres` on Supabase) with
-- search_path = ''; EXECUTE revoked from PUBLIC/anon/authenticated, granted to service_role.
-- Tables in pg_* schemas and information_schema are refused (42501).
BEGIN;

CREATE OR REPLACE FUNCTION public.centrovision_sync_apply(changes jsonb, writer text)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
  v_prev_srr   text;
  v_applied    int[]   := '{}';
  v_kept       int[]   := '{}';
  v_rej        jsonb[] := '{}';
  g            record;
  v_tab        text;
  v_code       text;
  v_msg        text;
  v_hint       text;
  v_sql        text;
  v_classify   text;
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
  v_a          int[];
  v_k          int[];
  v_state      text;
  v_emsg       text;
  v_edetail    text;
  v_ehint      text;
BEGIN
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

  -- No ordinary triggers (updated_at stampers), no FK checks: plain statement, see header.
  v_prev_srr := pg_catalog.current_setting('session_replication_role');
  SET LOCAL session_replication_role = replica;

  FOR g IN
    WITH el AS MATERIALIZED (
      -- one pass over the elements, validating their shape; keeps only small per-element values
      -- (the row data stays in `changes` and is picked out by array index per group later)
      SELECT a.o::int AS o, f.i AS ij, coalesce(f.s, 'public') AS s, f.t, f.op, f.k, f.ts,
             -- key set of an upsert's row; jsonb keeps object keys in a canonical order, so equal
             -- key sets give equal arrays
             CASE WHEN f.op = 'upsert' AND pg_catalog.jsonb_typeof(a.e->'row') = 'object'
                  THEN ARRAY(SELECT pg_catalog.jsonb_object_keys(a.e->'row')) END AS keys,
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
               WHEN f.op = 'upsert' AND pg_catalog.jsonb_typeof(a.e->'row') IS DISTINCT FROM 'object' THEN
                 '"row" is missing or not a JSON object (required for upsert)'
               WHEN f.op = 'upsert'
                    AND coalesce(pg_catalog.jsonb_typeof(a.e->'row'->'updated_at'), 'null') = 'null' THEN
                 '"row" must contain a non-null "updated_at"'
               WHEN f.op = 'delete' AND f.k IS NULL THEN
                 '"k" (primary key value as text) is missing or null (required for delete)'
               WHEN f.op IN ('delete', 'truncate') AND f.ts IS NULL THEN
                 '"ts" (local commit timestamptz as text) is missing or null (required for delete and truncate)'
             END AS err
      FROM pg_catalog.jsonb_array_elements(changes) WITH ORDINALITY AS a(e, o)
      CROSS JOIN LATERAL pg_catalog.jsonb_to_record(
             CASE WHEN pg_catalog.jsonb_typeof(a.e) = 'object' THEN a.e ELSE '{}' END)
             AS f(i jsonb, s text, t text, op text, k text, ts text)
    ), seg AS MATERIALIZED (
      -- sk: position relative to this table's truncates (2n = after n truncates, 2n+1 = truncate n+1)
      SELECT el.o, (el.ij)::numeric::int AS i, el.s COLLATE "C" AS s, el.t COLLATE "C" AS t,
             el.op COLLATE "C" AS op, el.k, el.ts,
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
             array_agg(sg.ts ORDER BY sg.o) FILTER (WHERE sg.op <> 'upsert') AS tss
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
           NULL::text[] AS tss, NULL::oid AS relid, NULL::text AS relkind, 0 AS npk,
           NULL::text AS pk, NULL::text AS pktype, NULL::boolean AS pk_immediate,
           NULL::jsonb AS cols, 0 AS ncols,
           NULL::oid AS ua_typid, NULL::boolean AS ua_gen,
           (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'i', el.ij, 'code', '22023', 'message', el.err) ORDER BY el.o)
            FROM el WHERE el.err IS NOT NULL) AS bad
    UNION ALL
    SELECT 1, gr.s, gr.t, gr.op, gr.sk, gr.first_o, gr.keys, gr.os, gr.ids, gr.ks, gr.tss,
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
    v_code := NULL;
    v_hint := NULL;

    -- table-level checks: reject the whole group with one message
    IF g.s = 'information_schema' OR g.s LIKE 'pg\_%' THEN
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

    -- build the set-based statement for this group
    -- upsert statements take $1 = jsonb array of the group's "row" objects, $2 = their i's, and
    -- return (applied i's, kept i's).  Written rows come back from RETURNING (CTE w); when all or
    -- none were written the answer is immediate, otherwise the PKs are read a second time (ROWS
    -- FROM zip with the i's) and matched against w.
    IF g.op = 'upsert' THEN
      v_classify := pg_catalog.format(
        'm AS MATERIALIZED ('
        ' SELECT x.i, w.k IS NOT NULL AS written'
        ' FROM ROWS FROM (pg_catalog.unnest($2::int[]),'
        '                 pg_catalog.jsonb_to_recordset($1) AS (%1$I %2$s)) AS x(i, k)'
        ' LEFT JOIN w ON w.k = x.k) '
        'SELECT CASE WHEN c.n = pg_catalog.cardinality($2) THEN $2'
        '            WHEN c.n = 0 THEN ''{}''::int[]'
        '            ELSE (SELECT coalesce(array_agg(m.i) FILTER (WHERE m.written), ''{}'') FROM m) END,'
        '       CASE WHEN c.n = pg_catalog.cardinality($2) THEN ''{}''::int[]'
        '            WHEN c.n = 0 THEN $2'
        '            ELSE (SELECT coalesce(array_agg(m.i) FILTER (WHERE NOT m.written), ''{}'') FROM m) END '
        'FROM c',
        g.pk, g.pktype);
    END IF;
    IF g.op = 'upsert' AND v_npresent = g.ncols AND g.pk_immediate THEN
      -- full row: single INSERT ... ON CONFLICT DO UPDATE (duplicate keys raise 21000 -> bisect)
      v_sql := pg_catalog.format(
        'WITH w AS ('
        ' INSERT INTO %1$s AS d (%2$s) %3$s'
        ' SELECT %4$s FROM pg_catalog.jsonb_to_recordset($1) AS r(%5$s)'
        ' ON CONFLICT (%6$I) DO UPDATE SET %7$s'
        ' WHERE d.updated_at IS NULL OR d.updated_at < EXCLUDED.updated_at'
        ' RETURNING d.%6$I AS k), '
        'c AS (SELECT count(*) AS n FROM w), ',
        v_tab, v_collist, v_override, v_sel_r, v_coldefs, g.pk,
        coalesce(v_set_ex, pg_catalog.format('%1$I = d.%1$I', g.pk))) || v_classify;
    ELSIF g.op = 'upsert' THEN
      -- partial row (absent columns): INSERT ... ON CONFLICT would check NOT NULL/CHECK on the
      -- default-filled insert tuple before detecting the conflict, so update existing rows and
      -- insert missing ones separately.  (Also used for a DEFERRABLE primary key, which ON
      -- CONFLICT cannot use as arbiter.)  UPDATE ... FROM would silently apply only one of two
      -- changes to the same key, so duplicate keys are turned into an error (-> bisect).
      v_sql := pg_catalog.format(
        'WITH src AS MATERIALIZED ('
        ' SELECT * FROM pg_catalog.jsonb_to_recordset($1) AS r(%5$s)), '
        'upd AS ('
        ' UPDATE %1$s AS d SET %7$s FROM src'
        ' WHERE d.%6$I = src.%6$I AND (d.updated_at IS NULL OR d.updated_at < src.updated_at)'
        ' RETURNING d.%6$I AS k), '
        'ins AS ('
        ' INSERT INTO %1$s AS d (%2$s) %3$s'
        ' SELECT %4$s FROM src'
        ' WHERE NOT EXISTS (SELECT 1 FROM %1$s AS e WHERE e.%6$I = src.%6$I)'
        ' RETURNING d.%6$I AS k), '
        'w AS (SELECT upd.k FROM upd UNION ALL SELECT ins.k FROM ins), '
        'c AS (SELECT count(*) AS n FROM w'
        '      WHERE (SELECT CASE WHEN count(src.%6$I) = count(DISTINCT src.%6$I) THEN 0'
        '                 ELSE (''duplicate primary key within one call: '' || count(*))::int END'
        '             FROM src) = 0), ',
        v_tab, v_collist, v_override, v_sel_src, v_coldefs, g.pk,
        coalesce(v_set_src, pg_catalog.format('%1$I = d.%1$I', g.pk))) || v_classify;
    ELSIF g.op = 'delete' THEN
      v_sql := pg_catalog.format(
        'WITH x AS MATERIALIZED ('
        ' SELECT u.i, u.k::%3$s AS k, u.ts::pg_catalog.timestamptz AS ts'
        ' FROM unnest($1::int[], $2::text[], $3::text[]) AS u(i, k, ts)), '
        'del AS ('
        ' DELETE FROM %1$s AS d USING x'
        ' WHERE d.%2$I = x.k AND (d.updated_at IS NULL OR d.updated_at <= x.ts)) '
        'SELECT coalesce(array_agg(y.i) FILTER (WHERE NOT y.kept), ''{}''),'
        ' coalesce(array_agg(y.i) FILTER (WHERE y.kept), ''{}'')'
        ' FROM (SELECT x.i, EXISTS (SELECT 1 FROM %1$s AS d'
        '                          WHERE d.%2$I = x.k AND d.updated_at > x.ts) AS kept'
        '       FROM x) AS y',
        v_tab, g.pk, g.pktype);
    ELSE
      v_sql := pg_catalog.format(
        'DELETE FROM %1$s WHERE updated_at IS NULL OR updated_at <= $1::pg_catalog.timestamptz',
        v_tab);
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
          EXECUTE v_sql INTO v_a, v_k USING v_rows, g.ids[v_lo:v_hi];
        ELSIF g.op = 'delete' THEN
          EXECUTE v_sql INTO v_a, v_k USING g.ids[v_lo:v_hi], g.ks[v_lo:v_hi], g.tss[v_lo:v_hi];
        ELSE
          EXECUTE v_sql USING g.tss[1];
          v_a := g.ids;
          v_k := '{}';
        END IF;
        v_applied := v_applied || v_a;
        v_kept    := v_kept || v_k;
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

  -- restore the caller's value (SET LOCAL would otherwise last until the end of its transaction)
  IF v_prev_srr = 'origin' THEN
    SET LOCAL session_replication_role = 'origin';
  ELSIF v_prev_srr = 'local' THEN
    SET LOCAL session_replication_role = 'local';
  END IF;

  RETURN pg_catalog.jsonb_build_object(
    'applied',  coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM unnest(v_applied) x), '[]'::jsonb),
    'kept',     coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM unnest(v_kept) x), '[]'::jsonb),
    'rejected', coalesce((SELECT pg_catalog.jsonb_agg(x ORDER BY x->'i') FROM unnest(v_rej) x), '[]'::jsonb));
END
$fn$;

COMMENT ON FUNCTION public.centrovision_sync_apply(jsonb, text) IS
  'BENCH BASELINE ONLY (benches/e2e/harness/apply_lww_no_row_state.sql): contract 2 last-write-wins apply, no per-row state';

-- Privileges: only the service role may call these (Supabase grants EXECUTE on new functions in
-- public to anon/authenticated by default privileges, hence the explicit revokes).
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_apply(jsonb, text) FROM PUBLIC;

DO $do$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE EXECUTE ON FUNCTION public.centrovision_sync_apply(jsonb, text) FROM %I', r);
    END IF;
  END LOOP;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    GRANT EXECUTE ON FUNCTION public.centrovision_sync_apply(jsonb, text) TO service_role;
  END IF;
END
$do$;

-- Ask PostgREST to pick up the new/changed functions (delivered at COMMIT).
NOTIFY pgrst, 'reload schema';

COMMIT;
