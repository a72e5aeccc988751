//! `centrovision_sync_apply()` (sql/upstream/001_apply.sql), case by case,
//! against a real cluster.
//!
//! The end-to-end tests reach the function through the service; these pin
//! its contract directly: which entries of a batch are applied, kept (an
//! older or equal `updated_at` loses) or rejected (and with which SQLSTATE);
//! values stored exactly; absent columns left alone; deletes and the
//! truncate barrier; bisection around bad rows; identifiers that need
//! quoting; keys of every kind; privileges. Ported from
//! `sql/upstream/test_apply.sh`, a psql script that nothing ran (its timing
//! part is the e2e benchmark's business; its correctness checks are here).
//!
//! How: each test gets a fresh database on a cluster of this module's own,
//! which has Supabase's roles (`anon`, `authenticated`, `service_role`, plus
//! an unrelated `someone_else`), so the grant checks have something to act
//! on without adding roles to the cluster other tests share. The upstream
//! SQL is loaded twice (it must be re-runnable), then [`FIXTURE`]. The cases
//! are SQL, as in the script: `tst.expect(name, batch, applied, kept,
//! rejected)` runs a batch and checks how it was partitioned (a rejection
//! is written `i:SQLSTATE`), `tst.ok(name, condition, info)` checks a
//! condition; each records a verdict, and a test fails naming every case
//! whose verdict is false, with what the function returned or the row held.
//! Some sections need rows an earlier one wrote (the script ran them all in
//! one session): a test runs those first, and their verdicts count too.

use centrovision_sync::upstream::CONTRACT_VERSION;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::support::sync::upstream_sql;
use crate::support::{Cluster, ClusterOptions};

/// A dedicated cluster with Supabase's roles, started by the first test
/// that needs it and shared by this module's tests (one database each).
async fn supabase_like_cluster() -> &'static Cluster {
    static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
    CLUSTER
        .get_or_init(|| async {
            let cluster = Cluster::start(ClusterOptions::default());
            cluster
                .connect("postgres")
                .await
                .batch_execute(
                    "CREATE ROLE anon NOLOGIN;
                     CREATE ROLE authenticated NOLOGIN;
                     CREATE ROLE service_role NOLOGIN;
                     CREATE ROLE someone_else NOLOGIN;",
                )
                .await
                .expect("create Supabase's roles");
            cluster
        })
        .await
}

/// tokio-postgres' Display of a server error is just "db error".
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.where_().map(|w| format!("\n  where: {w}")).unwrap_or_default()
        ),
        None => format!("{e:?}"),
    }
}

/// A fresh database with the upstream SQL loaded twice and [`FIXTURE`];
/// then runs `sections` in order.
async fn run_cases(hint: &str, sections: &[&str]) -> Client {
    let db = supabase_like_cluster().await.create_database(hint).await;
    let client = db.connect().await;
    for load in ["first", "second"] {
        if let Err(e) = client.batch_execute(&upstream_sql()).await {
            panic!("loading sql/upstream ({load} time) failed: {}", pg_error(&e));
        }
    }
    client.batch_execute(FIXTURE).await.unwrap_or_else(|e| panic!("fixture: {}", pg_error(&e)));
    for (i, sql) in sections.iter().enumerate() {
        if let Err(e) = client.batch_execute(sql).await {
            panic!("section {} of {hint} aborted: {}", i + 1, pg_error(&e));
        }
    }
    client
}

/// Every verdict recorded so far passed (and there is at least one).
async fn assert_every_case_passed(client: &Client) {
    let rows = client.query("SELECT name, ok, coalesce(info, '') FROM tst.checks ORDER BY n", &[]).await.unwrap();
    assert!(!rows.is_empty(), "no case recorded a verdict");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| format!("FAIL {} -- {}", r.get::<_, String>(0), r.get::<_, String>(2)))
        .collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), rows.len(), failed.join("\n"));
}

async fn cases(hint: &str, sections: &[&str]) {
    let client = run_cases(hint, sections).await;
    assert_every_case_passed(&client).await;
}

#[tokio::test]
async fn the_upstream_sql_loads_twice_reports_the_contract_version_and_applies_an_empty_batch() {
    let client = run_cases("apply_basics", &[BASICS]).await;
    assert_every_case_passed(&client).await;
    // The script checked `version() = 1`, which went stale when 002_verify.sql
    // (loaded with 001, as `init` does) raised the contract to 2: compare with
    // the version the service requires instead.
    let version: i32 = client.query_one("SELECT public.centrovision_sync_version()", &[]).await.unwrap().get(0);
    assert_eq!(version, CONTRACT_VERSION, "centrovision_sync_version() after loading sql/upstream");
}

#[tokio::test]
async fn inserts_store_every_column_type_exactly_in_any_foreign_key_order() {
    cases("apply_inserts", &[INSERTS]).await;
}

#[tokio::test]
async fn an_upsert_applies_only_when_newer_and_leaves_absent_columns_untouched() {
    cases("apply_lww", &[INSERTS, LAST_WRITER_WINS]).await;
}

#[tokio::test]
async fn a_delete_applies_unless_the_row_is_newer_and_never_cascades() {
    cases("apply_deletes", &[INSERTS, DELETES]).await;
}

#[tokio::test]
async fn a_truncate_removes_the_rows_older_than_it_and_keeps_newer_ones_and_later_writes() {
    cases("apply_truncate", &[TRUNCATE_BARRIER]).await;
}

#[tokio::test]
async fn bad_entries_are_rejected_with_their_sqlstate_and_message_while_the_rest_applies() {
    cases("apply_rejections", &[INSERTS, REJECTIONS]).await;
}

#[tokio::test]
async fn bisection_isolates_the_bad_rows_of_a_batch_and_applies_every_good_one() {
    cases("apply_bisection", &[BISECTION]).await;
}

#[tokio::test]
async fn identifiers_that_need_quoting_or_look_like_format_codes_work_in_every_operation() {
    cases("apply_quoting", &[QUOTING]).await;
}

#[tokio::test]
async fn identity_and_deferrable_keys_json_number_keys_and_a_key_sent_twice_are_applied_correctly() {
    cases("apply_keys", &[KEYS]).await;
}

#[tokio::test]
async fn a_statement_level_error_rejects_its_group_once_and_local_triggers_fire_again_after_the_call() {
    cases("apply_group_errors", &[GROUP_ERRORS]).await;
}

#[tokio::test]
async fn only_the_tables_the_project_syncs_are_written_or_hashed_and_auth_users_never() {
    cases("apply_refusals", &[REFUSALS]).await;
}

/// A project set up before the registry of synced tables existed: its
/// tables carry the enrolment trigger but no registry row. Installing the
/// upstream SQL again registers them, so clinics whose `init --upstream` ran
/// before keep syncing; a table never enrolled stays refused.
#[tokio::test]
async fn tables_enrolled_before_the_registry_existed_are_registered_when_the_sql_is_installed_again() {
    let client = run_cases(
        "apply_backfill",
        &["SELECT centrovision_sync.enroll_table('public', 'visits');
           DELETE FROM centrovision_sync.synced_table;"],
    )
    .await;
    client.batch_execute(&upstream_sql()).await.unwrap_or_else(|e| panic!("installing again: {}", pg_error(&e)));
    let registered: Vec<String> = client
        .query("SELECT schema_name || '.' || table_name FROM centrovision_sync.synced_table ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(registered, ["public.visits"], "the enrolled table, and only it, is registered again");
}

#[tokio::test]
async fn only_service_role_may_call_it_and_it_runs_as_security_definer_with_an_empty_search_path() {
    let client = run_cases("apply_privileges", &[PRIVILEGES]).await;
    assert_every_case_passed(&client).await;
    client.batch_execute("SET ROLE service_role").await.unwrap();
    let called = client
        .query_one(
            r#"SELECT (public.centrovision_sync_apply(changes => '[{"i":1,"t":"visits","op":"delete","k":"1","ts":"2000-01-01 00:00:00+00","e":1,"l":"0/1","n":0}]', writer => 'clinic-x')->'applied')::text"#,
            &[],
        )
        .await;
    client.batch_execute("RESET ROLE").await.unwrap();
    let applied: String = called.unwrap_or_else(|e| panic!("calling it as service_role failed: {}", pg_error(&e))).get(0);
    assert_eq!(applied, "[1]", "callable as service_role");
}

#[tokio::test]
async fn batches_of_a_thousand_rows_apply_then_their_replay_is_kept_and_triggers_stay_off() {
    const BATCHES: i32 = 4;
    const BATCH: i32 = 1000;
    let client = run_cases("apply_bulk", &[BULK]).await;
    // (what, base updated_at, tag, applied?) in the script's order.
    for (what, base, tag, applied) in [
        ("insert (new rows)", "2024-03-01 00:00:00+00", "ins", true),
        ("update (existing rows, newer updated_at)", "2024-04-01 00:00:00+00", "upd", true),
        ("replay of the updates (all kept)", "2024-04-01 00:00:00+00", "upd", false),
    ] {
        for b in 0..BATCHES {
            let row = client
                .query_one(
                    &format!(
                        "SELECT jsonb_array_length(r->'applied'), jsonb_array_length(r->'kept'),
                                jsonb_array_length(r->'rejected'), left(r::text, 500)
                         FROM (SELECT tst.apply(tst.bench_batch({b}, {BATCH}, '{base}', '{tag}')) AS r) s"
                    ),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{what}, batch {b}: {}", pg_error(&e)));
            let got: (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
            let want = if applied { (BATCH, 0, 0) } else { (0, BATCH, 0) };
            assert_eq!(got, want, "{what}, batch {b}: (applied, kept, rejected); result: {}", row.get::<_, String>(3));
        }
    }
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE patient_name LIKE 'Patient upd %'),
                    count(*) FILTER (WHERE updated_at > '2025-01-01')
             FROM public.bench",
            &[],
        )
        .await
        .unwrap();
    let (rows, updated, rewritten): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let n = i64::from(BATCHES * BATCH);
    assert_eq!((rows, updated), (n, n), "rows in the table, rows carrying the update");
    assert_eq!(rewritten, 0, "the table's own trigger rewrote updated_at: the apply must run with triggers off");
}
/// The verdict helpers and the tables the cases write to (the script's
/// fixtures).
const FIXTURE: &str = r#"
SET client_min_messages = warning;
CREATE SCHEMA tst;
CREATE TABLE tst.checks (n serial, name text, ok boolean, info text);
CREATE TABLE tst.res (name text PRIMARY KEY, r jsonb);

CREATE FUNCTION tst.ok(p_name text, p_ok boolean, p_info text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ INSERT INTO tst.checks (name, ok, info) VALUES (p_name, coalesce(p_ok, false), p_info) $$;

-- The cases predate writers (contract 3): each batch is sent as a writer of its own whose id sorts
-- below every earlier one and below "legacy" (rows the fixture inserts directly), with a commit
-- position on each element. So between a batch and what is there, the later updated_at wins and
-- on equal stamps an edit keeps what is there while a delete wins: the cases' rule.
-- They also predate the registry of synced tables: every table a batch names is registered first,
-- as `init --upstream` registers the configured ones (system schemas cannot be; REFUSALS covers
-- what the registry refuses).
CREATE SEQUENCE tst.writer_seq;
CREATE FUNCTION tst.apply(p_changes jsonb) RETURNS jsonb
LANGUAGE sql AS $$
  INSERT INTO centrovision_sync.synced_table (schema_name, table_name)
  SELECT DISTINCT coalesce(e->>'s', 'public'), e->>'t'
  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_changes) = 'array' THEN p_changes ELSE '[]' END) AS e
  WHERE jsonb_typeof(e) = 'object' AND coalesce(e->>'t', '') <> '' AND coalesce(e->>'s', 'public') <> ''
    AND coalesce(e->>'s', 'public') NOT LIKE 'pg\_%'
  ON CONFLICT DO NOTHING;
  SELECT public.centrovision_sync_apply(
    CASE WHEN jsonb_typeof(p_changes) = 'array' THEN
      coalesce((SELECT jsonb_agg(CASE WHEN jsonb_typeof(e) = 'object'
                                      THEN jsonb_build_object('e', 1, 'l', '0/1', 'n', o) || e ELSE e END
                                 ORDER BY o)
                FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS a(e, o)), '[]')
    ELSE p_changes END,
    'a' || lpad((999999 - nextval('tst.writer_seq'))::text, 6, '0'))
$$;

-- run a batch; check the applied/kept/rejected partition (rejected given as 'i:code')
CREATE FUNCTION tst.expect(p_name text, p_changes jsonb, p_applied int[], p_kept int[],
                           p_rej text[] DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE r jsonb; a int[]; k int[]; rj text[]; n_all int; n_distinct int;
BEGIN
  r := tst.apply(p_changes);
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
"#;

/// An empty batch.
const BASICS: &str = r#"
SELECT tst.expect('empty batch', '[]', '{}', '{}');
"#;

/// New rows: every column type, partial rows, foreign keys unchecked.
const INSERTS: &str = r#"
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
"#;

/// Needs the rows of [`INSERTS`].
const LAST_WRITER_WINS: &str = r#"
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
"#;

/// Needs the patients of [`INSERTS`].
const DELETES: &str = r#"
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
"#;

/// A truncate inside a batch: older rows go, newer and later ones stay.
const TRUNCATE_BARRIER: &str = r#"
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
-- 103 was written earlier in the same call, so by the same writer before the truncate (contract 3:
-- one writer's commit order decides, whatever the stamps): the truncate removes it. 100 (no sync
-- state, older than the truncate) goes; 101's own later delete removes it.
SELECT tst.ok('truncate barrier: old row gone, newer stays, re-insert after truncate stays',
  (SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM public.visits) = '102=after,104=after-old',
  (SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM public.visits));
SELECT tst.expect('truncate of table without PK', $j$[
 {"i": 1, "t": "nopk", "op": "truncate", "ts": "2024-01-20 00:00:00+00"}]$j$, '{1}', '{}');
"#;

/// Needs patient 1 of [`INSERTS`] (its email makes a unique violation).
const REJECTIONS: &str = r#"
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
 {"i": 7, "t": "patients", "op": "upsert", "row": {"name": "no pk", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 8, "s": "nosuchschema", "t": "patients", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"},
 {"i": 9, "t": "Patients", "op": "delete", "k": "1", "ts": "2024-01-01 00:00:00+00"}
]$j$, '{}', '{}', '{1:42P01,2:42809,3:0A000,4:0A000,5:42703,7:22023,8:42P01,9:42P01}');
-- (a system table, once element 6 here, is refused before anything is written: see REFUSALS)
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
    PERFORM public.centrovision_sync_apply('{"changes": []}', 'clinic-x');
    PERFORM tst.ok('non-array changes raises 22023', false, 'no error');
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT;
    PERFORM tst.ok('non-array changes raises 22023', st = '22023' AND m LIKE '%must be a JSON array%', st || ' ' || m);
  END;
  BEGIN
    PERFORM public.centrovision_sync_apply(NULL, 'clinic-x');
    PERFORM tst.ok('NULL changes raises 22023', false, 'no error');
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT;
    PERFORM tst.ok('NULL changes raises 22023', st = '22023', st || ' ' || m);
  END;
END $$;
"#;

/// Bad rows inside large batches, found by bisection.
const BISECTION: &str = r#"
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
"#;

/// Identifiers that need quoting, or look like format()/jsonpath codes.
const QUOTING: &str = r#"
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
-- a row with no sync state (written before it existed) is decided on its own updated_at
DELETE FROM centrovision_sync.row_version WHERE table_name = 'Weird "Table"' AND pk = '2';
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
"#;

/// Identity and deferrable keys, a key twice in one call, number keys.
const KEYS: &str = r#"
SELECT tst.expect('identity ALWAYS primary key', $j$[
 {"i": 1, "t": "ident", "op": "upsert", "row": {"id": 42, "v": "a", "updated_at": "2024-01-01 00:00:00+00"}}]$j$, '{1}', '{}');
SELECT tst.expect('identity ALWAYS primary key: update', $j$[
 {"i": 1, "t": "ident", "op": "upsert", "row": {"id": 42, "v": "b", "updated_at": "2024-01-02 00:00:00+00"}}]$j$, '{1}', '{}');
SELECT tst.ok('identity row', (SELECT v = 'b' FROM public.ident WHERE id = 42));

-- One call is one writer, and its elements come in its commit order (the wrapper numbers them):
-- the later element wins whatever its updated_at (contract 3; under contract 2 "older" was kept).
SELECT tst.expect('same key twice in one call (contract violation) applies sequentially', $j$[
 {"i": 1, "t": "visits", "op": "upsert", "row": {"id": 300, "note": "first", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "visits", "op": "upsert", "row": {"id": 300, "note": "second", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 3, "t": "visits", "op": "upsert", "row": {"id": 301, "note": "newer", "updated_at": "2024-01-02 00:00:00+00"}},
 {"i": 4, "t": "visits", "op": "upsert", "row": {"id": 301, "note": "older", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, '{1,2,3,4}', '{}');
SELECT tst.ok('sequential duplicates: final values',
  (SELECT string_agg(note, ',' ORDER BY id) FROM public.visits WHERE id IN (300, 301)) = 'second,older');

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
"#;

/// A statement-level error, and the session state after a call.
const GROUP_ERRORS: &str = r#"
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
  PERFORM tst.apply($j$[{"i": 1, "t": "visits", "op": "upsert", "row": {"id": 500, "note": "x", "updated_at": "2024-01-01 00:00:00+00"}}]$j$);
  PERFORM tst.ok('session_replication_role restored after the call',
                 current_setting('session_replication_role') = 'origin', current_setting('session_replication_role'));
  UPDATE public.visits SET note = 'y' WHERE id = 500 RETURNING updated_at INTO ua;
  PERFORM tst.ok('local triggers fire again after the call', ua = now(), ua::text);
END $$;
"#;

/// What the SECURITY DEFINER functions refuse: every table but the ones the
/// project syncs (centrovision_sync.synced_table), before anything is written.
const REFUSALS: &str = r#"
-- Supabase's own table, and a table of the synced schema nobody listed in [sync] tables.
CREATE SCHEMA auth;
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, updated_at timestamptz);
INSERT INTO auth.users VALUES ('00000000-0000-0000-0000-00000000aaaa', 'admin@clinic', '2024-01-01 00:00:00+00');
CREATE TABLE public.unlisted (id int PRIMARY KEY, v text, updated_at timestamptz);
SELECT centrovision_sync.enroll_table('public', 'visits');

-- SQLSTATE | message | hint of a direct call (not tst.apply, which registers what it names)
CREATE FUNCTION tst.refusal(p_changes jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; m text; h text;
BEGIN
  PERFORM public.centrovision_sync_apply(p_changes, 'clinic-x');
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
  RETURN st || ' | ' || m || ' | ' || h;
END $$;
CREATE FUNCTION tst.refused_as_unsynced(p_name text, p_got text, p_table text) RETURNS void LANGUAGE sql AS $$
  SELECT tst.ok(p_name,
    p_got LIKE '42501 | centrovision_sync_apply: ' || p_table || ' is not a table this project syncs; nothing was written | %'
    AND p_got LIKE '%add it to [sync] tables%init --upstream%', p_got)
$$;
CREATE FUNCTION tst.sqlstate_of(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; m text; h text;
BEGIN
  EXECUTE p_sql;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
  RETURN st || ' | ' || m || ' | ' || coalesce(h, '');
END $$;

SELECT tst.refused_as_unsynced('an upsert into auth.users is refused', tst.refusal($j$[
 {"i": 1, "s": "auth", "t": "users", "op": "upsert", "e": 1, "l": "0/1", "n": 1,
  "row": {"id": "00000000-0000-0000-0000-00000000bbbb", "email": "intruder@x", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$), 'auth.users');
SELECT tst.refused_as_unsynced('a delete and a truncate of auth.users are refused', tst.refusal($j$[
 {"i": 1, "s": "auth", "t": "users", "op": "delete", "k": "00000000-0000-0000-0000-00000000aaaa", "ts": "2030-01-01 00:00:00+00", "e": 1, "l": "0/2", "n": 1},
 {"i": 2, "s": "auth", "t": "users", "op": "truncate", "ts": "2030-01-01 00:00:00+00", "e": 1, "l": "0/2", "n": 2}
]$j$), 'auth.users');
SELECT tst.ok('auth.users is untouched and has no sync state',
  (SELECT array_agg(email) = '{admin@clinic}' FROM auth.users)
  AND NOT EXISTS (SELECT 1 FROM centrovision_sync.row_version WHERE schema_name = 'auth')
  AND NOT EXISTS (SELECT 1 FROM centrovision_sync.writer_progress WHERE writer = 'clinic-x'),
  (SELECT string_agg(email, ', ') FROM auth.users));

SELECT tst.refused_as_unsynced('one unlisted table refuses the whole call, listed rows included', tst.refusal($j$[
 {"i": 1, "t": "visits", "op": "upsert", "e": 1, "l": "0/3", "n": 1, "row": {"id": 7001, "note": "listed", "updated_at": "2024-01-01 00:00:00+00"}},
 {"i": 2, "t": "unlisted", "op": "upsert", "e": 1, "l": "0/3", "n": 2, "row": {"id": 1, "v": "x", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$), 'public.unlisted');
SELECT tst.ok('nothing of the refused call was written',
  NOT EXISTS (SELECT 1 FROM public.visits WHERE id = 7001) AND NOT EXISTS (SELECT 1 FROM public.unlisted)
  AND NOT EXISTS (SELECT 1 FROM centrovision_sync.row_version WHERE table_name IN ('visits', 'unlisted')));
SELECT tst.refused_as_unsynced('a system table is refused', tst.refusal($j$[
 {"i": 1, "s": "pg_catalog", "t": "pg_class", "op": "truncate", "ts": "2024-01-01 00:00:00+00", "e": 1, "l": "0/4", "n": 1}
]$j$), 'pg_catalog.pg_class');
SELECT tst.refused_as_unsynced('the sync schema itself is refused', tst.refusal($j$[
 {"i": 1, "s": "centrovision_sync", "t": "settings", "op": "upsert", "e": 1, "l": "0/4", "n": 1,
  "row": {"key": "max_clock_skew_seconds", "value": "1e9", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$), 'centrovision_sync.settings');

INSERT INTO tst.res SELECT 'listed', public.centrovision_sync_apply($j$[
  {"i": 1, "t": "visits", "op": "upsert", "e": 1, "l": "0/5", "n": 1, "row": {"id": 7002, "note": "listed", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, 'clinic-x');
SELECT tst.ok('a listed table is still written',
  (SELECT r -> 'applied' FROM tst.res WHERE name = 'listed') = '[1]'
  AND EXISTS (SELECT 1 FROM public.visits WHERE id = 7002),
  (SELECT r::text FROM tst.res WHERE name = 'listed'));

-- the verify hash functions read only synced tables too
SELECT tst.ok('hashing auth.users is refused',
  tst.sqlstate_of($s$SELECT public.centrovision_sync_bucket_hashes('auth', 'users', 'id', '{email}', 4)$s$)
    LIKE '42501 | centrovision sync verify: auth.users is not a table this project syncs | %init --upstream%',
  tst.sqlstate_of($s$SELECT public.centrovision_sync_bucket_hashes('auth', 'users', 'id', '{email}', 4)$s$));
SELECT tst.ok('hashing rows of an unlisted table is refused',
  tst.sqlstate_of($s$SELECT public.centrovision_sync_row_hashes('public', 'unlisted', 'id', '{v}', 4, '{0,1,2,3}')$s$)
    LIKE '42501 | centrovision sync verify: public.unlisted is not a table this project syncs | %',
  tst.sqlstate_of($s$SELECT public.centrovision_sync_row_hashes('public', 'unlisted', 'id', '{v}', 4, '{0,1,2,3}')$s$));
SELECT tst.ok('a listed table is still hashed',
  (public.centrovision_sync_bucket_hashes('public', 'visits', 'id', '{note}', 4) -> 'cols') = '["note"]');

-- sync state left over from before the registry is never served for an unlisted table
INSERT INTO centrovision_sync.row_version (schema_name, table_name, pk, writer, stamp, version_id)
VALUES ('auth', 'users', '00000000-0000-0000-0000-00000000aaaa', 'legacy', now(), nextval('centrovision_sync.version_seq'));
SELECT tst.ok('the feed serves no row of an unlisted table',
  (SELECT r->'changes' FROM (SELECT public.centrovision_sync_changes('clinic-x', 'auth', '{users}', NULL, NULL, 0, 100) AS r) q) = '[]',
  (SELECT public.centrovision_sync_changes('clinic-x', 'auth', '{users}', NULL, NULL, 0, 100)::text));
SELECT tst.ok('row versions of an unlisted table are not served',
  public.centrovision_sync_row_versions('auth', 'users', '{00000000-0000-0000-0000-00000000aaaa}', NULL) = '[]');

-- the registry refuses system and Supabase schemas; enrolling registers
SELECT tst.ok('auth.users cannot be enrolled',
  tst.sqlstate_of($s$SELECT centrovision_sync.enroll_table('auth', 'users')$s$) LIKE '42501 | %schema auth%',
  tst.sqlstate_of($s$SELECT centrovision_sync.enroll_table('auth', 'users')$s$));
SELECT tst.ok('a system schema cannot be registered',
  tst.sqlstate_of($s$INSERT INTO centrovision_sync.synced_table VALUES ('pg_catalog', 'pg_class')$s$) LIKE '23514 | %',
  tst.sqlstate_of($s$INSERT INTO centrovision_sync.synced_table VALUES ('pg_catalog', 'pg_class')$s$));
SELECT centrovision_sync.enroll_table('public', 'unlisted');
INSERT INTO tst.res SELECT 'enrolled', public.centrovision_sync_apply($j$[
  {"i": 1, "t": "unlisted", "op": "upsert", "e": 1, "l": "0/6", "n": 1, "row": {"id": 1, "v": "now listed", "updated_at": "2024-01-01 00:00:00+00"}}
]$j$, 'clinic-x');
SELECT tst.ok('once enrolled, the table is written',
  (SELECT r -> 'applied' FROM tst.res WHERE name = 'enrolled') = '[1]',
  (SELECT r::text FROM tst.res WHERE name = 'enrolled'));
"#;

/// Who may execute it, and how it runs.
const PRIVILEGES: &str = r#"
-- the table the test then writes as service_role is one the project syncs
INSERT INTO centrovision_sync.synced_table (schema_name, table_name) VALUES ('public', 'visits');
SELECT tst.ok('EXECUTE: service_role yes; anon, authenticated, PUBLIC no',
  has_function_privilege('service_role', 'public.centrovision_sync_apply(jsonb, text)', 'EXECUTE')
  AND NOT has_function_privilege('anon', 'public.centrovision_sync_apply(jsonb, text)', 'EXECUTE')
  AND NOT has_function_privilege('authenticated', 'public.centrovision_sync_apply(jsonb, text)', 'EXECUTE')
  AND NOT has_function_privilege('someone_else', 'public.centrovision_sync_apply(jsonb, text)', 'EXECUTE')
  AND has_function_privilege('service_role', 'public.centrovision_sync_version()', 'EXECUTE')
  AND NOT has_function_privilege('anon', 'public.centrovision_sync_version()', 'EXECUTE'));
SELECT tst.ok('every centrovision_sync function in public: service_role only (anon, authenticated, PUBLIC no)',
  NOT EXISTS (SELECT 1 FROM pg_proc p
              WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'centrovision\_sync\_%'
                AND (has_function_privilege('anon', p.oid, 'EXECUTE')
                     OR has_function_privilege('someone_else', p.oid, 'EXECUTE')
                     OR NOT has_function_privilege('service_role', p.oid, 'EXECUTE'))),
  (SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p
   WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'centrovision\_sync\_%'
     AND (has_function_privilege('anon', p.oid, 'EXECUTE') OR has_function_privilege('someone_else', p.oid, 'EXECUTE')
          OR NOT has_function_privilege('service_role', p.oid, 'EXECUTE'))));
SELECT tst.ok('SECURITY DEFINER with search_path = ''''',
  (SELECT prosecdef AND proconfig = ARRAY['search_path=""'] FROM pg_proc
   WHERE oid = 'public.centrovision_sync_apply(jsonb, text)'::regprocedure),
  (SELECT proconfig::text FROM pg_proc WHERE oid = 'public.centrovision_sync_apply(jsonb, text)'::regprocedure));
"#;

/// A realistic 12-column table (trigger, index on `updated_at`) and a
/// server-side generator of its batches (the script's benchmark fixture).
const BULK: &str = r#"
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
CREATE FUNCTION tst.bench_batch(b int, bs int, base timestamptz, tag text) RETURNS jsonb LANGUAGE sql AS $$
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
$$;
"#;
