#!/usr/bin/env bash
# test_apply.sh — tests sql/upstream/*.sql (centrovision_sync_apply) against a throwaway
# PostgreSQL 15 cluster: starts the cluster, loads the SQL files twice (idempotency), runs the
# semantic cases (PASS/FAIL per case), then times bulk inserts/updates.  Exits non-zero on any
# failure.  The cluster is stopped and deleted on exit.
#
# Env: PGBIN (default /usr/lib/postgresql/15/bin), PGPORT_TEST (default 55999),
#      BENCH=0 to skip the timing part, BENCH_ROWS (default 100000), BENCH_BATCH (default 1000).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PGPORT_TEST:-55999}
BENCH=${BENCH:-1}
BENCH_ROWS=${BENCH_ROWS:-100000}
BENCH_BATCH=${BENCH_BATCH:-1000}

WORK=$(mktemp -d)
chmod 755 "$WORK"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$WORK"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -N -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c track_functions=pl" start >/dev/null

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)

# Supabase-like roles, so the grant/revoke DO blocks have something to act on.
"${PSQL[@]}" <<'SQL'
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE service_role NOLOGIN;
CREATE ROLE someone_else NOLOGIN;
SQL

shopt -s nullglob
FILES=("$HERE"/[0-9][0-9][0-9]_*.sql)
[ ${#FILES[@]} -gt 0 ] || { echo "no SQL files in $HERE"; exit 1; }
for _ in 1 2; do
  for f in "${FILES[@]}"; do
    "${PSQL[@]}" -f "$f"
  done
done
echo "loaded ${#FILES[@]} file(s) twice"

# ---------------------------------------------------------------------------------------------
# fixtures + cases; every check inserts into tst.checks, printed at the end
# ---------------------------------------------------------------------------------------------
OUT=$("${PSQL[@]}" -At 2>&1 <<'SQL'
SET client_min_messages = warning;
\o /dev/null
CREATE SCHEMA tst;
CREATE TABLE tst.checks (n serial, name text, ok boolean, info text);
CREATE TABLE tst.res (name text PRIMARY KEY, r jsonb);

CREATE FUNCTION tst.ok(p_name text, p_ok boolean, p_info text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ INSERT INTO tst.checks (name, ok, info) VALUES (p_name, coalesce(p_ok, false), p_info) $$;

-- run a batch; check the applied/kept/rejected partition (rejected given as 'i:code')
CREATE FUNCTION tst.expect(p_name text, p_changes jsonb, p_applied int[], p_kept int[],
                           p_rej text[] DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE r jsonb; a int[]; k int[]; rj text[]; n_all int; n_distinct int;
BEGIN
  r := public.centrovision_sync_apply(p_changes);
  INSERT INTO tst.res VALUES (p_name, r);
  a  := ARRAY(SELECT x::int FROM jsonb_array_elements_text(r->'applied') x ORDER BY 1);
  k  := ARRAY(SELECT x::int FROM jsonb_array_elements_text(r->'kept') x ORDER BY 1);
  rj := ARRAY(SELECT coalesce(x->>'i', 'null') || ':' || (x->>'code') FROM jsonb_array_elements(r->'rejected') x ORDER BY 1);
  SELECT count(*), count(DISTINCT v) INTO n_all, n_distinct FROM (
    SELECT x FROM jsonb_array_elements(r->'applied') x UNION ALL
    SELECT x FROM jsonb_array_elements(r->'kept') x UNION ALL
    SELECT x->'i' FROM jsonb_array_elements(r->'rejected') x) s(v);
  PERFORM tst.ok(p_name,
    a = ARRAY(SELECT unnest(p_applied) ORDER BY 1)
    AND k = ARRAY(SELECT unnest(p_kept) ORDER BY 1)
    AND rj = ARRAY(SELECT unnest(p_rej) ORDER BY 1)
    AND n_all = jsonb_array_length(p_changes),
    'got ' || r::text);
  RETURN r;
END $$;

CREATE TYPE public.mood AS ENUM ('calm', 'anxious', 'happy');
CREATE FUNCTION public.stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;

CREATE TABLE public.patients (
  id         uuid PRIMARY KEY,
  name       text NOT NULL,
  email      text UNIQUE,
  tags       text[],
  photo      bytea,
  balance    numeric(12,2),
  mood       public.mood,
  birth      date,
  seen_at    timestamptz,
  meta       jsonb,
  notes      text,
  age        int CHECK (age >= 0),
  name_upper text GENERATED ALWAYS AS (upper(name)) STORED,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER patients_stamp BEFORE INSERT OR UPDATE ON public.patients
  FOR EACH ROW EXECUTE FUNCTION public.stamp_updated_at();
ALTER TABLE public.patients ADD COLUMN dropped_col text;
ALTER TABLE public.patients DROP COLUMN dropped_col;

CREATE TABLE public.visits (
  id         bigint PRIMARY KEY,
  patient_id uuid REFERENCES public.patients (id) ON DELETE CASCADE,
  note       text,
  updated_at timestamptz NOT NULL
);
CREATE TRIGGER visits_stamp BEFORE INSERT OR UPDATE ON public.visits
  FOR EACH ROW EXECUTE FUNCTION public.stamp_updated_at();

CREATE TABLE public."Weird ""Table""" (
  "Id"         int PRIMARY KEY,
  "select"     text,
  "Mixed Case" int DEFAULT 7,
  "gen col"    int GENERATED ALWAYS AS ("Mixed Case" * 2) STORED,
  updated_at   timestamptz
);
CREATE SCHEMA "Other Schema";
CREATE TABLE "Other Schema"."order" (id text PRIMARY KEY, "from" text, updated_at timestamptz);
CREATE TABLE public.nopk (a int, updated_at timestamptz);
CREATE TABLE public.twopk (a int, b int, updated_at timestamptz, PRIMARY KEY (a, b));
CREATE TABLE public.noupd (id int PRIMARY KEY, v text);
CREATE TABLE public.ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text, updated_at timestamptz);
CREATE TABLE public.required (id int PRIMARY KEY, big text NOT NULL, small text, updated_at timestamptz NOT NULL);
CREATE VIEW public.v_patients AS SELECT * FROM public.patients;
CREATE TABLE public."pct%s $1 tab" ("id%1$s" text PRIMARY KEY, "v%I" text NOT NULL, "Row" int, updated_at timestamptz);
CREATE TABLE public.deferred (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text, updated_at timestamptz);


-- ----------------------------------------------------------------------------- basics
SELECT tst.ok('version() = 1', public.centrovision_sync_version() = 1);
SELECT tst.expect('empty batch', '[]', '{}', '{}');

-- insert (full rows) + FK order does not matter (visit before its patient, visit of unknown patient)
SELECT tst.expect('insert: full rows, all types; FK order irrelevant', $j$[
 {"i": 1, "t": "visits", "op": "upsert", "row": {"id": 1, "patient_id": "00000000-0000-0000-0000-000000000001", "note": "v1", "updated_at": "2024-01-01 10:00:00+00"}},
 {"i": 2, "t": "visits", "op": "upsert", "row": {"id": 2, "patient_id": "00000000-0000-0000-0000-0000000000ff", "note": "orphan", "updated_at": "2024-01-01 10:00:00+00"}},
 {"i": 3, "s": "public", "t": "patients", "op": "upsert", "row": {
   "id": "00000000-0000-0000-0000-000000000001", "name": "alice", "email": "a@x", "tags": "{a,\"b c\"}",
   "photo": "\\x00ff", "balance": "12.345", "mood": "calm", "birth": "1990-02-03",
   "seen_at": "2024-01-01T12:00:00.5+02:00", "meta": {"k": [1, "two", null]}, "notes": "keep me",
   "age": 34, "name_upper": "IGNORED", "created_at": "2023-12-31 00:00:00+00",
   "updated_at": "2024-01-01 10:00:00.123456+00"}},
 {"i": 4, "t": "patients", "op": "upsert", "row": {
   "id": "00000000-0000-0000-0000-000000000002", "name": "bob", "email": null, "tags": ["x", "y"],
   "photo": null, "balance": "NaN", "mood": "happy", "birth": "infinity", "seen_at": "-infinity",
   "meta": "just a string", "notes": null, "age": 0, "name_upper": null,
   "created_at": "2023-12-31 00:00:00+00", "updated_at": "2024-01-01 10:00:00+00"}}
]$j$, '{1,2,3,4}', '{}');

SELECT tst.ok('insert: values stored exactly (text[], bytea, numeric(12,2), enum, date, timestamptz, jsonb)',
  (SELECT tags = '{a,"b c"}' AND photo = '\x00ff'::bytea AND balance = 12.35 AND mood = 'calm'
      AND birth = '1990-02-03' AND seen_at = '2024-01-01 10:00:00.5+00'
      AND meta = '{"k": [1, "two", null]}'::jsonb AND notes = 'keep me' AND age = 34
      AND created_at = '2023-12-31 00:00:00+00'
   FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000001'),
  (SELECT row_to_json(p)::text FROM public.patients p WHERE id = '00000000-0000-0000-0000-000000000001'));
SELECT tst.ok('insert: JSON array for text[], NaN numeric, infinity date, jsonb string',
  (SELECT tags = '{x,y}' AND balance = 'NaN' AND birth = 'infinity' AND seen_at = '-infinity'
      AND meta = '"just a string"'::jsonb
   FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000002'),
  (SELECT row_to_json(p)::text FROM public.patients p WHERE id = '00000000-0000-0000-0000-000000000002'));
SELECT tst.ok('trigger did not rewrite updated_at on insert',
  (SELECT updated_at = '2024-01-01 10:00:00.123456+00' FROM public.patients
   WHERE id = '00000000-0000-0000-0000-000000000001')
  AND (SELECT updated_at = '2024-01-01 10:00:00+00' FROM public.visits WHERE id = 1));
SELECT tst.ok('generated column ignored in row, computed upstream',
  (SELECT name_upper = 'ALICE' FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000001'));
SELECT tst.ok('FK not checked: orphan visit inserted', EXISTS (SELECT 1 FROM public.visits WHERE id = 2));

-- partial insert: absent columns take their defaults
SELECT tst.expect('insert: partial row', $j$[
 {"i": 10, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000003", "name": "carol", "updated_at": "2024-01-01 10:00:00+00"}}
]$j$, '{10}', '{}');
SELECT tst.ok('insert: absent columns get defaults, updated_at preserved',
  (SELECT created_at IS NOT NULL AND notes IS NULL AND updated_at = '2024-01-01 10:00:00+00'
   FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000003'));

-- ----------------------------------------------------------------------------- LWW
SELECT tst.expect('update: newer applied, older kept, tie kept', $j$[
 {"i": 1, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000001", "name": "alice2", "email": "a@x", "tags": "{a,\"b c\"}", "photo": "\\x00ff", "balance": "1", "mood": "calm", "birth": "1990-02-03", "seen_at": null, "meta": null, "notes": "keep me", "age": 35, "created_at": "2023-12-31 00:00:00+00", "updated_at": "2024-01-02 10:00:00.654321+00"}},
 {"i": 2, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000002", "name": "bob-old", "email": null, "tags": null, "photo": null, "balance": null, "mood": null, "birth": null, "seen_at": null, "meta": null, "notes": null, "age": 1, "created_at": "2023-12-31 00:00:00+00", "updated_at": "2023-06-01 00:00:00+00"}},
 {"i": 3, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000003", "name": "carol-tie", "email": null, "tags": null, "photo": null, "balance": null, "mood": null, "birth": null, "seen_at": null, "meta": null, "notes": null, "age": 1, "created_at": "2023-12-31 00:00:00+00", "updated_at": "2024-01-01T10:00:00Z"}}
]$j$, '{1}', '{2,3}');
SELECT tst.ok('update: newer values written, generated column recomputed, updated_at exact (trigger off)',
  (SELECT name = 'alice2' AND name_upper = 'ALICE2' AND age = 35 AND balance = 1
      AND updated_at = '2024-01-02 10:00:00.654321+00'
   FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000001'));
SELECT tst.ok('update: older and tie left untouched',
  (SELECT name = 'bob' FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000002')
  AND (SELECT name = 'carol' FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000003'));

-- absent column untouched on update (unchanged TOASTed value)
SELECT tst.expect('update: partial row applied', $j$[
 {"i": 1, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000001", "name": "alice3", "updated_at": "2024-01-03 00:00:00+00"}}
]$j$, '{1}', '{}');
SELECT tst.ok('update: absent columns untouched',
  (SELECT name = 'alice3' AND notes = 'keep me' AND tags = '{a,"b c"}' AND email = 'a@x'
      AND updated_at = '2024-01-03 00:00:00+00'
   FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000001'));

SELECT tst.expect('update: partial rows, mixed newer/older/new in one group', $j$[
 {"i": 1, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000001", "notes": "newer", "updated_at": "2024-01-04 00:00:00+00"}},
 {"i": 2, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000002", "notes": "older", "updated_at": "2020-01-01 00:00:00+00"}},
 {"i": 3, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000009", "notes": "new, lacks name", "updated_at": "2024-01-04 00:00:00+00"}},
 {"i": 4, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000003", "notes": "tie", "updated_at": "2024-01-01 10:00:00+00"}}
]$j$, '{1}', '{2,4}', '{3:23502}');
SELECT tst.ok('update: partial mixed values',
  (SELECT string_agg(coalesce(notes, '-'), ',' ORDER BY id) FROM public.patients
   WHERE id IN ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000003'))
  = 'newer,-,-');

INSERT INTO public.required VALUES (1, repeat('x', 100000), 's', '2024-01-01 00:00:00+00');
SELECT tst.expect('partial update where absent column is NOT NULL w/o default; partial insert lacking it rejected', $j$[
 {"i": 1, "t": "required", "op": "upsert", "row": {"id": 1, "small": "s2", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 2, "t": "required", "op": "upsert", "row": {"id": 2, "small": "new", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 3, "t": "required", "op": "upsert", "row": {"id": 3, "big": "b", "small": "new", "updated_at": "2024-01-02 00:00:00+00"}}
]$j$, '{1,3}', '{}', '{2:23502}');
SELECT tst.ok('partial update kept the NOT NULL column',
  (SELECT big = repeat('x', 100000) AND small = 's2' FROM public.required WHERE id = 1));

-- ----------------------------------------------------------------------------- deletes
SET session_replication_role = replica;  -- fixture rows with explicit updated_at (trigger off)
INSERT INTO public.visits VALUES (10, NULL, 'a', '2024-01-01 00:00:00+00'), (11, NULL, 'b', '2024-01-05 00:00:00+00'),
                                 (12, NULL, 'c', '2024-01-03 00:00:00+00'),
                                 (21, '00000000-0000-0000-0000-000000000002', 'child', '2024-01-01 00:00:00+00');
SET session_replication_role = origin;
SELECT tst.expect('delete: older applied, newer kept, equal applied, missing applied', $j$[
 {"i": 1, "t": "visits", "op": "delete", "k": "10", "ts": "2024-01-02 00:00:00+00"},
 {"i": 2, "t": "visits", "op": "delete", "k": "11", "ts": "2024-01-02 00:00:00+00"},
 {"i": 3, "t": "visits", "op": "delete", "k": "12", "ts": "2024-01-03T00:00:00Z"},
 {"i": 4, "t": "visits", "op": "delete", "k": "999", "ts": "2024-01-02 00:00:00+00"}
]$j$, '{1,3,4}', '{2}');
SELECT tst.ok('delete: rows 10 and 12 gone, 11 kept',
  (SELECT array_agg(id ORDER BY id) = '{11}' FROM public.visits WHERE id IN (10, 11, 12)));

SELECT tst.expect('delete: bad key and bad ts rejected, rest applies', $j$[
 {"i": 1, "t": "patients", "op": "delete", "k": "not-a-uuid", "ts": "2024-01-02 00:00:00+00"},
 {"i": 2, "t": "patients", "op": "delete", "k": "00000000-0000-0000-0000-000000000002", "ts": "yesterday-ish"},
 {"i": 3, "t": "patients", "op": "delete", "k": "00000000-0000-0000-0000-000000000003", "ts": "2024-06-01 00:00:00+00"}
]$j$, '{3}', '{}', '{1:22P02,2:22007}');
SELECT tst.ok('delete: patient 3 gone, 2 still there',
  NOT EXISTS (SELECT 1 FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000003')
  AND EXISTS (SELECT 1 FROM public.patients WHERE id = '00000000-0000-0000-0000-000000000002'));

-- delete of a parent does not cascade (RI triggers are off in replica mode, the child's own delete comes separately)
SELECT tst.expect('delete parent', $j$[
 {"i": 1, "t": "patients", "op": "delete", "k": "00000000-0000-0000-0000-000000000002", "ts": "2024-06-01 00:00:00+00"}
]$j$, '{1}', '{}');
SELECT tst.ok('delete of a parent does not cascade (RI triggers off)', EXISTS (SELECT 1 FROM public.visits WHERE id = 21));

-- ----------------------------------------------------------------------------- truncate barrier
DELETE FROM public.visits;
SET session_replication_role = replica;
INSERT INTO public.visits VALUES (100, NULL, 'old', '2024-01-10 00:00:00+00'), (101, NULL, 'new', '2024-01-30 00:00:00+00');
SET session_replication_role = origin;
SELECT tst.expect('truncate barrier', $j$[
 {"i": 1, "t": "visits", "op": "upsert", "row": {"id": 102, "note": "before", "updated_at": "2024-01-10 00:00:00+00"}},
 {"i": 2, "t": "visits", "op": "upsert", "row": {"id": 103, "note": "before-newer", "updated_at": "2024-01-25 00:00:00+00"}},
 {"i": 3, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 50, "select": "w", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 4, "t": "visits", "op": "truncate", "ts": "2024-01-20 00:00:00+00"},
 {"i": 5, "t": "visits", "op": "upsert", "row": {"id": 102, "note": "after", "updated_at": "2024-01-15 00:00:00+00"}},
 {"i": 6, "t": "visits", "op": "upsert", "row": {"id": 104, "note": "after-old", "updated_at": "2024-01-05 00:00:00+00"}},
 {"i": 7, "t": "visits", "op": "delete", "k": "101", "ts": "2024-01-31 00:00:00+00"},
 {"i": 8, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 51, "select": "w", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,2,3,4,5,6,7,8}', '{}');
SELECT tst.ok('truncate barrier: old row gone, newer stays, re-insert after truncate stays',
  (SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM public.visits) = '102=after,103=before-newer,104=after-old',
  (SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM public.visits));
SELECT tst.expect('truncate of table without PK', $j$[
 {"i": 1, "t": "nopk", "op": "truncate", "ts": "2024-01-20 00:00:00+00"}]$j$, '{1}', '{}');

-- ----------------------------------------------------------------------------- rejections
SELECT tst.expect('unknown column rejected by name, other rows apply', $j$[
 {"i": 1, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000004", "name": "dan", "foo": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000005", "name": "eve", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 3, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000006", "name": "fay", "foo": 1, "bar": 2, "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{2}', '{}', '{1:42703,3:42703}');
SELECT tst.ok('unknown column message',
  (SELECT x->>'message' FROM tst.res, jsonb_array_elements(r->'rejected') x
   WHERE name = 'unknown column rejected by name, other rows apply' AND x->>'i' = '1')
  = 'column "foo" does not exist in upstream table public.patients',
  (SELECT r::text FROM tst.res WHERE name = 'unknown column rejected by name, other rows apply'));

SELECT tst.expect('bad values rejected with SQLSTATE, rest of batch applies', $j$[
 {"i": 1, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000011", "name": "r1", "email": "r1", "balance": "1.5", "mood": "calm", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000012", "name": "r2", "email": "r2", "balance": "abc", "mood": "calm", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 3, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000013", "name": null, "email": "r3", "balance": "1", "mood": "calm", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 4, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000014", "name": "r4", "email": "r4", "balance": "1", "mood": "calm", "age": -1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 5, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000015", "name": "r5", "email": "a@x", "balance": "1", "mood": "calm", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 6, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000016", "name": "r6", "email": "r6", "balance": "1", "mood": "sad", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 7, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000017", "name": "r7", "email": "r7", "balance": "12345678901.5", "mood": "calm", "age": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 8, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000018", "name": "r8", "email": "r8", "balance": "2", "mood": "happy", "age": 2, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 9, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000019", "name": "r9", "email": "r9", "balance": "3", "mood": "calm", "age": 3, "updated_at": "not a time"}},
 {"i": 10, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000020", "name": "r10", "email": "r10", "balance": "4", "mood": "calm", "age": 4, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 11, "t": "patients", "op": "upsert", "row": {"id": null, "name": "r11", "email": "r11", "balance": "4", "mood": "calm", "age": 4, "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,8,10}', '{}', '{2:22P02,3:23502,4:23514,5:23505,6:22P02,7:22003,9:22007,11:23502}');
SELECT tst.ok('rejected entries carry message/detail',
  (SELECT bool_and(x ? 'message') AND bool_or(x ? 'detail') FROM tst.res, jsonb_array_elements(r->'rejected') x
   WHERE name = 'bad values rejected with SQLSTATE, rest of batch applies'));
SELECT tst.ok('good rows of the failing batch are there',
  (SELECT count(*) = 3 FROM public.patients WHERE name IN ('r1', 'r8', 'r10')));

SELECT tst.expect('table-level rejections', $j$[
 {"i": 1, "t": "nosuch", "op": "upsert", "row": {"id": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "v_patients", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"},
 {"i": 3, "t": "nopk", "op": "upsert", "row": {"a": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 4, "t": "twopk", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"},
 {"i": 5, "t": "noupd", "op": "upsert", "row": {"id": 1, "v": "x", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 6, "s": "pg_catalog", "t": "pg_class", "op": "truncate", "ts": "2024-01-01 00:00:00+00"},
 {"i": 7, "t": "patients", "op": "upsert", "row": {"name": "no pk", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 8, "s": "nosuchschema", "t": "patients", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"},
 {"i": 9, "t": "Patients", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"}
]$j$, '{}', '{}', '{1:42P01,2:42809,3:0A000,4:0A000,5:42703,6:42501,7:22023,8:42P01,9:42P01}');
SELECT tst.ok('unknown table message names it',
  (SELECT x->>'message' FROM tst.res, jsonb_array_elements(r->'rejected') x
   WHERE name = 'table-level rejections' AND x->>'i' = '1') = 'upstream table public.nosuch does not exist'
  AND (SELECT x->>'message' FROM tst.res, jsonb_array_elements(r->'rejected') x
   WHERE name = 'table-level rejections' AND x->>'i' = '9') = 'upstream table public."Patients" does not exist');

SELECT tst.expect('bad element shapes rejected with 22023', $j$[
 5,
 {"t": "patients", "op": "upsert", "row": {}},
 {"i": 3, "op": "upsert", "row": {}},
 {"i": 4, "t": "patients", "op": "merge"},
 {"i": 5, "t": "patients", "op": "delete", "ts": "2024-01-01 00:00:00+00"},
 {"i": 6, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000001"}},
 {"i": 7, "t": "patients", "op": "truncate"},
 {"i": 8.5, "t": "patients", "op": "truncate", "ts": "2024-01-01 00:00:00+00"},
 {"i": 9, "t": "patients", "op": "upsert", "row": [1]},
 {"i": 10, "t": "patients"},
 {"i": 11, "t": "patients", "op": "upsert", "row": {"id": "00000000-0000-0000-0000-000000000001", "updated_at": null}},
 {"i": 12, "t": "patients", "op": "delete", "k": "00000000-0000-0000-0000-000000000099", "ts": "2024-01-01 00:00:00+00"}
]$j$, '{12}', '{}', '{null:22023,null:22023,3:22023,4:22023,5:22023,6:22023,7:22023,8.5:22023,9:22023,10:22023,11:22023}');

DO $$
DECLARE st text; m text;
BEGIN
  BEGIN
    PERFORM public.centrovision_sync_apply('{"changes": []}');
    PERFORM tst.ok('non-array changes raises 22023', false, 'no error');
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT;
    PERFORM tst.ok('non-array changes raises 22023', st = '22023' AND m LIKE '%must be a JSON array%', st || ' ' || m);
  END;
  BEGIN
    PERFORM public.centrovision_sync_apply(NULL);
    PERFORM tst.ok('NULL changes raises 22023', false, 'no error');
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT;
    PERFORM tst.ok('NULL changes raises 22023', st = '22023', st || ' ' || m);
  END;
END $$;

SELECT tst.expect('bisection: 200-row batch with 3 bad rows',
  (SELECT jsonb_agg(jsonb_build_object('i', n, 't', 'visits', 'op', 'upsert', 'row', jsonb_build_object(
     'id', 1000 + n, 'patient_id', NULL, 'note', 'n' || n,
     'updated_at', CASE WHEN n IN (37, 38, 199) THEN 'garbage' ELSE '2024-01-01 00:00:00+00' END)) ORDER BY n)
   FROM generate_series(0, 199) n),
  ARRAY(SELECT n FROM generate_series(0, 199) n WHERE n NOT IN (37, 38, 199)), '{}', '{37:22007,38:22007,199:22007}');
SELECT tst.ok('bisection: good rows written', (SELECT count(*) = 197 FROM public.visits WHERE id BETWEEN 1000 AND 1199));
SELECT tst.expect('bisection: interleaved tables (non-contiguous groups) with bad rows',
  (SELECT jsonb_agg(CASE WHEN n % 2 = 0
     THEN jsonb_build_object('i', n, 't', 'visits', 'op', 'upsert', 'row', jsonb_build_object(
            'id', 3000 + n, 'note', 'v' || n,
            'updated_at', CASE WHEN n IN (10, 64) THEN 'bad' ELSE '2024-01-01 00:00:00+00' END))
     ELSE jsonb_build_object('i', n, 't', 'Weird "Table"', 'op', 'upsert', 'row', jsonb_build_object(
            'Id', 3000 + n, 'select', 'w' || n,
            'updated_at', CASE WHEN n IN (33) THEN 'bad' ELSE '2024-01-01 00:00:00+00' END)) END ORDER BY n)
   FROM generate_series(0, 99) n),
  ARRAY(SELECT n FROM generate_series(0, 99) n WHERE n NOT IN (10, 33, 64)), '{}', '{10:22007,33:22007,64:22007}');
SELECT tst.ok('interleaved: rows landed in the right tables',
  (SELECT count(*) = 48 AND bool_and(note = 'v' || (id - 3000)) FROM public.visits WHERE id BETWEEN 3000 AND 3099)
  AND (SELECT count(*) = 49 AND bool_and("select" = 'w' || ("Id" - 3000)) FROM public."Weird ""Table""" WHERE "Id" BETWEEN 3000 AND 3099));
SELECT tst.expect('bisection: every row bad',
  (SELECT jsonb_agg(jsonb_build_object('i', n, 't', 'visits', 'op', 'upsert', 'row', jsonb_build_object(
     'id', 2000 + n, 'patient_id', 'nope', 'note', 'n' || n, 'updated_at', '2024-01-01 00:00:00+00')) ORDER BY n)
   FROM generate_series(1, 50) n),
  '{}', '{}', ARRAY(SELECT n || ':22P02' FROM generate_series(1, 50) n));

-- ----------------------------------------------------------------------------- quoting
SELECT tst.expect('quoted identifiers: insert', $j$[
 {"i": 1, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 1, "select": "s1", "Mixed Case": 3, "gen col": 99, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "s": "Other Schema", "t": "order", "op": "upsert", "row": {"id": "o'1", "from": "here", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 3, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 2, "select": "s2", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,2,3}', '{}');
SELECT tst.ok('quoted identifiers: values, generated + default columns',
  (SELECT string_agg(format('%s/%s/%s/%s', "Id", "select", "Mixed Case", "gen col"), ',' ORDER BY "Id")
   FROM public."Weird ""Table""" WHERE "Id" IN (1, 2)) = '1/s1/3/6,2/s2/7/14'
  AND (SELECT "from" = 'here' FROM "Other Schema"."order" WHERE id = 'o''1'),
  (SELECT string_agg(format('%s/%s/%s/%s', "Id", "select", "Mixed Case", "gen col"), ',' ORDER BY "Id") FROM public."Weird ""Table"""));
SET session_replication_role = replica;
UPDATE public."Weird ""Table""" SET updated_at = NULL WHERE "Id" = 2;
SET session_replication_role = origin;
SELECT tst.expect('quoted identifiers: update, NULL upstream updated_at counts as oldest, delete', $j$[
 {"i": 1, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 1, "select": "s1b", "Mixed Case": 4, "gen col": 0, "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 2, "t": "Weird \"Table\"", "op": "upsert", "row": {"Id": 2, "select": "s2b", "Mixed Case": 5, "gen col": 0, "updated_at": "2020-01-01 00:00:00+00"}},
 {"i": 3, "s": "Other Schema", "t": "order", "op": "delete", "k": "o'1", "ts": "2024-01-01 00:00:00+00"}
]$j$, '{1,2,3}', '{}');
SELECT tst.ok('quoted identifiers: updated values',
  (SELECT string_agg(format('%s/%s/%s/%s', "Id", "select", "Mixed Case", "gen col"), ',' ORDER BY "Id")
   FROM public."Weird ""Table""" WHERE "Id" IN (1, 2)) = '1/s1b/4/8,2/s2b/5/10'
  AND NOT EXISTS (SELECT 1 FROM "Other Schema"."order"));

SELECT tst.expect('format()/jsonpath special characters in names: insert, update, kept, delete', $j$[
 {"i": 1, "t": "pct%s $1 tab", "op": "upsert", "row": {"id%1$s": "a'b\"c", "v%I": "x", "Row": 1, "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "pct%s $1 tab", "op": "upsert", "row": {"id%1$s": "k2", "v%I": "y", "Row": 2, "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,2}', '{}');
SELECT tst.expect('format()/jsonpath special characters in names: mixed', $j$[
 {"i": 1, "t": "pct%s $1 tab", "op": "upsert", "row": {"id%1$s": "a'b\"c", "v%I": "x2", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 2, "t": "pct%s $1 tab", "op": "upsert", "row": {"id%1$s": "k2", "v%I": "y2", "updated_at": "2023-01-02 00:00:00+00"}},
 {"i": 3, "t": "pct%s $1 tab", "op": "delete", "k": "nope", "ts": "2023-01-02 00:00:00+00"}
]$j$, '{1,3}', '{2}');
SELECT tst.ok('special characters: values', (SELECT string_agg("v%I" || '/' || "Row", ',' ORDER BY "id%1$s") FROM public."pct%s $1 tab") = 'x2/1,y/2',
  (SELECT string_agg("v%I" || '/' || "Row", ',' ORDER BY "id%1$s") FROM public."pct%s $1 tab"));

-- ----------------------------------------------------------------------------- misc
SELECT tst.expect('identity ALWAYS primary key', $j$[
 {"i": 1, "t": "ident", "op": "upsert", "row": {"id": 42, "v": "a", "updated_at": "2024-01-01 00:00:00+00"}}]$j$, '{1}', '{}');
SELECT tst.expect('identity ALWAYS primary key: update', $j$[
 {"i": 1, "t": "ident", "op": "upsert", "row": {"id": 42, "v": "b", "updated_at": "2024-01-02 00:00:00+00"}}]$j$, '{1}', '{}');
SELECT tst.ok('identity row', (SELECT v = 'b' FROM public.ident WHERE id = 42));

SELECT tst.expect('same key twice in one call (contract violation) applies sequentially', $j$[
 {"i": 1, "t": "visits", "op": "upsert", "row": {"id": 300, "note": "first", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "visits", "op": "upsert", "row": {"id": 300, "note": "second", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 3, "t": "visits", "op": "upsert", "row": {"id": 301, "note": "newer", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 4, "t": "visits", "op": "upsert", "row": {"id": 301, "note": "older", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,2,3}', '{4}');
SELECT tst.ok('sequential duplicates: final values',
  (SELECT string_agg(note, ',' ORDER BY id) FROM public.visits WHERE id IN (300, 301)) = 'second,newer');

SELECT tst.expect('JSON number keys, numeric i order irrelevant', $j$[
 {"i": 7, "t": "visits", "op": "upsert", "row": {"id": 400, "note": "n", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 3, "t": "visits", "op": "delete", "k": 401, "ts": "2024-01-01 00:00:00+00"}
]$j$, '{3,7}', '{}');

SELECT tst.expect('DEFERRABLE primary key (no ON CONFLICT arbiter): insert', $j$[
 {"i": 1, "t": "deferred", "op": "upsert", "row": {"id": 1, "v": "a", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "deferred", "op": "upsert", "row": {"id": 2, "v": "b", "updated_at": "2024-01-01 00:00:00+00"}}]$j$, '{1,2}', '{}');
SELECT tst.expect('DEFERRABLE primary key: update newer, keep older', $j$[
 {"i": 1, "t": "deferred", "op": "upsert", "row": {"id": 1, "v": "a2", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 2, "t": "deferred", "op": "upsert", "row": {"id": 2, "v": "b2", "updated_at": "2023-01-02 00:00:00+00"}}]$j$, '{1}', '{2}');
SELECT tst.ok('DEFERRABLE primary key: values', (SELECT string_agg(v, ',' ORDER BY id) FROM public.deferred) = 'a2,b');

-- a statement-level error (same for every row) rejects the group without bisecting it
CREATE TABLE public.uniq_expr (id int PRIMARY KEY, v text, updated_at timestamptz);
CREATE SEQUENCE public.block_calls;
CREATE FUNCTION public.block_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM nextval('public.block_calls'); RAISE EXCEPTION 'writes blocked' USING ERRCODE = '42939'; END $$;
CREATE TRIGGER block BEFORE INSERT ON public.uniq_expr FOR EACH STATEMENT EXECUTE FUNCTION public.block_writes();
ALTER TABLE public.uniq_expr ENABLE ALWAYS TRIGGER block;
SELECT tst.expect('statement-level error rejects the whole group',
  (SELECT jsonb_agg(jsonb_build_object('i', n, 't', 'uniq_expr', 'op', 'upsert', 'row',
     jsonb_build_object('id', n, 'v', 'x', 'updated_at', '2024-01-01 00:00:00+00')) ORDER BY n) FROM generate_series(1, 40) n),
  '{}', '{}', ARRAY(SELECT n || ':42939' FROM generate_series(1, 40) n));
SELECT tst.ok('statement-level error: tried once, not bisected', (SELECT last_value = 1 FROM public.block_calls),
  (SELECT last_value::text FROM public.block_calls));

-- session_replication_role restored; trigger works again in the same transaction
DO $$
DECLARE ua timestamptz;
BEGIN
  PERFORM public.centrovision_sync_apply($j$[{"i": 1, "t": "visits", "op": "upsert", "row": {"id": 500, "note": "x", "updated_at": "2024-01-01 00:00:00+00"}}]$j$);
  PERFORM tst.ok('session_replication_role restored after the call',
                 current_setting('session_replication_role') = 'origin', current_setting('session_replication_role'));
  UPDATE public.visits SET note = 'y' WHERE id = 500 RETURNING updated_at INTO ua;
  PERFORM tst.ok('local triggers fire again after the call', ua = now(), ua::text);
END $$;

-- privileges / security settings
SELECT tst.ok('EXECUTE: service_role yes; anon, authenticated, PUBLIC no',
  has_function_privilege('service_role', 'public.centrovision_sync_apply(jsonb)', 'EXECUTE')
  AND NOT has_function_privilege('anon', 'public.centrovision_sync_apply(jsonb)', 'EXECUTE')
  AND NOT has_function_privilege('authenticated', 'public.centrovision_sync_apply(jsonb)', 'EXECUTE')
  AND NOT has_function_privilege('someone_else', 'public.centrovision_sync_apply(jsonb)', 'EXECUTE')
  AND has_function_privilege('service_role', 'public.centrovision_sync_version()', 'EXECUTE')
  AND NOT has_function_privilege('anon', 'public.centrovision_sync_version()', 'EXECUTE'));
SELECT tst.ok('SECURITY DEFINER with search_path = ''''',
  (SELECT prosecdef AND proconfig = ARRAY['search_path=""'] FROM pg_proc
   WHERE oid = 'public.centrovision_sync_apply(jsonb)'::regprocedure),
  (SELECT proconfig::text FROM pg_proc WHERE oid = 'public.centrovision_sync_apply(jsonb)'::regprocedure));
SET ROLE service_role;
SELECT (public.centrovision_sync_apply(changes => '[{"i":1,"t":"visits","op":"delete","k":"1","ts":"2000-01-01 00:00:00+00"}]')->'applied') = '[1]' AS svc_ok \gset
RESET ROLE;
SELECT tst.ok('callable as service_role', :'svc_ok'::boolean);
\o

SELECT CASE WHEN ok THEN 'PASS ' ELSE 'FAIL ' END || name || CASE WHEN ok THEN '' ELSE ' -- ' || coalesce(info, '') END
FROM tst.checks ORDER BY n;
SQL
) || { echo "$OUT"; echo "FAIL: test SQL aborted"; exit 1; }

echo "$OUT"
NPASS=$(grep -c '^PASS ' <<<"$OUT" || true)
NFAIL=$(grep -c '^FAIL ' <<<"$OUT" || true)
echo "== $NPASS passed, $NFAIL failed"
[ "$NFAIL" = 0 ] && [ "$NPASS" -gt 0 ] || exit 1

# ---------------------------------------------------------------------------------------------
# benchmark: realistic 12-column table (trigger, index on updated_at), batches sent as SQL text
# literals from a client, one transaction per call
# ---------------------------------------------------------------------------------------------
[ "$BENCH" = 1 ] || exit 0
NB=$(( BENCH_ROWS / BENCH_BATCH ))
"${PSQL[@]}" <<SQL
CREATE TABLE public.bench (
  id           bigint PRIMARY KEY,
  clinic_id    uuid NOT NULL,
  patient_name text NOT NULL,
  birth        date,
  status       text,
  amount       numeric(12,2),
  notes        text,
  tags         text[],
  data         jsonb,
  visit_at     timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bench_updated_at ON public.bench (updated_at, id);
CREATE TRIGGER bench_stamp BEFORE INSERT OR UPDATE ON public.bench
  FOR EACH ROW EXECUTE FUNCTION public.stamp_updated_at();
CREATE FUNCTION tst.bench_batch(b int, bs int, base timestamptz, tag text) RETURNS jsonb LANGUAGE sql AS \$\$
  SELECT jsonb_agg(jsonb_build_object('i', n, 't', 'bench', 'op', 'upsert', 'row', jsonb_build_object(
    'id', b::bigint * bs + n,
    'clinic_id', '7f1c2a9e-0000-4000-8000-00000000000' || (n % 10),
    'patient_name', 'Patient ' || tag || ' ' || (b * bs + n),
    'birth', (date '1950-01-01' + ((b * bs + n) % 20000))::text,
    'status', (ARRAY['scheduled', 'done', 'cancelled'])[1 + n % 3],
    'amount', ((b * bs + n) % 100000 / 100.0)::text,
    'notes', repeat('note ' || tag || ' ', 1 + n % 8),
    'tags', '{eye,"follow up",' || tag || '}',
    'data', jsonb_build_object('iop', 14 + n % 8, 'va', '20/' || (20 + n % 5 * 5), 'tag', tag),
    'visit_at', base - make_interval(days => n % 300),
    'created_at', timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => b * bs + n),
    'updated_at', base + make_interval(secs => (b * bs + n) / 1000000.0))) ORDER BY n)
  FROM generate_series(0, bs - 1) n
\$\$;
SQL

gen() {  # $1 base timestamptz, $2 tag, $3 output file, [$4 SQL template with %L for the batch]
  local tmpl=${4:-"SELECT (r->''kept'') = ''[]'' AND (r->''rejected'') = ''[]'' AND jsonb_array_length(r->''applied'') = $BENCH_BATCH FROM (SELECT public.centrovision_sync_apply(%L::jsonb) AS r) s;"}
  "${PSQL[@]}" -At -c "SELECT format('$tmpl', tst.bench_batch(b, $BENCH_BATCH, '$1', '$2')) FROM generate_series(0, $NB - 1) b" > "$3"
}
fn_ms() {  # total server-side time spent in centrovision_sync_apply so far (track_functions)
  "${PSQL[@]}" -At -c "SELECT coalesce(sum(total_time), 0) FROM pg_stat_user_functions WHERE funcname = 'centrovision_sync_apply'"
}
run() {  # $1 label, $2 file
  local t0 t1 out ok f0 f1
  f0=$(fn_ms)
  t0=$(date +%s.%N)
  out=$("${PSQL[@]}" -At -f "$2")
  t1=$(date +%s.%N)
  sleep 0.5; f1=$(fn_ms)
  ok=$(grep -c '^t$' <<<"$out" || true)
  awk -v l="$1" -v a="$t0" -v b="$t1" -v n="$BENCH_ROWS" -v ok="$ok" -v nb="$NB" -v f0="$f0" -v f1="$f1" \
    'BEGIN { printf "BENCH %-42s %7d rows in %5.2f s = %6.0f rows/s end-to-end", l, n, b - a, n / (b - a);
             if (f1 > f0) printf "; in function %5.2f s = %6.0f rows/s", (f1 - f0) / 1000, n / ((f1 - f0) / 1000);
             printf "  (%d/%d calls as expected)\n", ok, nb }'
  [ "$ok" = "$NB" ] || { echo "FAIL: benchmark $1: unexpected outcome"; exit 1; }
}

gen '2024-03-01 00:00:00+00' ins "$WORK/b_ins.sql"
gen '2024-04-01 00:00:00+00' upd "$WORK/b_upd.sql"
gen '2024-04-01 00:00:00+00' upd "$WORK/b_kept.sql" \
  "SELECT (r->''applied'') = ''[]'' AND jsonb_array_length(r->''kept'') = $BENCH_BATCH FROM (SELECT public.centrovision_sync_apply(%L::jsonb) AS r) s;"
gen '2024-04-01 00:00:00+00' upd "$WORK/b_floor.sql" "SELECT jsonb_array_length(%L::jsonb) = $BENCH_BATCH;"
echo "bench: $NB calls of $BENCH_BATCH rows, $(du -h "$WORK/b_ins.sql" | cut -f1) of SQL text, one transaction per call"
run "floor: send + parse batch, no apply" "$WORK/b_floor.sql"
run "insert (new rows)" "$WORK/b_ins.sql"
run "update (existing rows, newer updated_at)" "$WORK/b_upd.sql"
run "replay of the updates (all kept)" "$WORK/b_kept.sql"
"${PSQL[@]}" -At -c "SELECT 'bench table: ' || count(*) || ' rows, max(updated_at) ' || max(updated_at) || ', rows with updated_at rewritten by the trigger: ' || count(*) FILTER (WHERE updated_at > '2025-01-01') FROM public.bench"
