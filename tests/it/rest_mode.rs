//! REST mode against the PostgREST stand-in for Supabase's HTTP layer:
//! faults, keys, missing objects, and exact values through JSON.

use crate::all_modes;
use crate::support;

use std::time::Duration;

use support::postgrest::Fault;
use support::sync::{Mode, Pair, count, kill9};
use support::wait_for;

const APPLY: &str = "/rest/v1/rpc/centrovision_sync_apply";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_hitting_429_then_503_then_success_is_applied_once() {
    let pair = Pair::new("rest_429_503", Mode::Rest).await;
    pair.init().await;
    pair.local
        .connect()
        .await
        .batch_execute("INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let s = pair.standin();
    s.faults().push(APPLY, Fault::Status { code: 429, retry_after_secs: Some(1), body: None });
    s.faults().push(APPLY, Fault::Status { code: 503, retry_after_secs: None, body: None });
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(s.requests(APPLY), 3, "429, 503, then the one that applied");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 50);
    let retries: i64 = count(&pair.local.journal(), "SELECT max(retry_count)::int8 FROM _sync_pending").await;
    assert_eq!(retries, 2, "both failed attempts are recorded on the rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_slow_answers_and_malformed_json_are_retried_without_loss() {
    let pair = Pair::new("rest_flaky", Mode::Rest).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) SELECT 'x' || g FROM generate_series(1, 30) g").await.unwrap();
    let s = pair.standin();
    s.faults().push(APPLY, Fault::DropConnection);
    s.faults().push(APPLY, Fault::Delay(Duration::from_millis(300)));
    pair.once().await;
    pair.assert_converged().await;
    // A 200 whose body is not JSON (a captive portal) is transient too.
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('after portal')").await.unwrap();
    s.faults().push(APPLY, Fault::MalformedJson);
    pair.once().await;
    pair.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_413_splits_the_batch_in_half_and_every_row_arrives() {
    let pair = Pair::new("rest_413_split", Mode::Rest).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) SELECT 'x' || g FROM generate_series(1, 30) g").await.unwrap();
    pair.standin().faults().push(APPLY, Fault::Status { code: 413, retry_after_secs: None, body: None });
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(pair.standin().requests(APPLY), 3, "30 rows refused, then two halves of 15");
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE parked_at IS NOT NULL OR retry_count > 0").await, 0);
    let status = String::from_utf8_lossy(&pair.ok(&["status"]).await.stdout).to_string();
    assert!(status.contains("push: batch size reduced to 15 after upstream refused a request as too large (configured 500)"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_change_upstream_refuses_as_too_large_is_parked_saying_why_and_kept() {
    let pair = Pair::new("rest_413", Mode::Rest).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('big')").await.unwrap();
    pair.standin().faults().set_persistent(APPLY, Some(Fault::Status { code: 413, retry_after_secs: None, body: None }));
    pair.once().await;
    assert_eq!(pair.standin().requests(APPLY), 1, "a lone change too large is not retried as it is");
    let error: String = pair
        .local
        .journal()
        .connect()
        .await
        .query_one("SELECT error FROM _sync_pending WHERE NOT synced AND parked_at IS NOT NULL", &[])
        .await
        .expect("the change is kept, parked")
        .get(0);
    assert!(error.contains("too large for upstream even alone") && error.contains("413"), "{error}");
    let status = String::from_utf8_lossy(&pair.ok(&["status"]).await.stdout).to_string();
    assert!(status.contains("journal: 0 pending, 1 parked"), "{status}");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_yields_one_clear_error_an_alert_and_no_tight_retry_loop() {
    let mut pair = Pair::new("rest_wrong_key", Mode::Rest).await;
    pair.init().await;
    // `once` says clearly what is wrong and exits non-zero.
    pair.service_key = "sb_secret_not_the_right_one".into();
    pair.write_config();
    let o = pair.exec(&["once"], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("service_role key") && err.contains("401"), "{err}");
    assert!(!err.contains("sb_secret_not_the_right_one"), "the key leaked: {err}");
    // `run` alerts once and backs off instead of hammering upstream.
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('waits')").await.unwrap();
    let mut child = pair.spawn_run(&[]);
    let s = pair.standin();
    wait_for("several health checks", Duration::from_secs(60), || async {
        (s.requests("/rest/v1/rpc/centrovision_sync_version") >= 6).then_some(())
    })
    .await;
    kill9(&mut child);
    let log = pair.run_log();
    assert_eq!(log.matches("ALERT: upstream is not ready").count() + log.matches("ALERT: upstream refuses").count(), 1, "{log}");
    assert_eq!(s.requests(APPLY), 0, "no pushes while the key is rejected");
    // One health check a second (the test's health_check_seconds = 1), not a loop.
    let version_calls = s.requests("/rest/v1/rpc/centrovision_sync_version");
    assert!(version_calls < 30, "{version_calls} calls: a tight retry loop");
    assert!(!log.contains("sb_secret_not_the_right_one"), "the key leaked into the log");
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE NOT synced").await, 1, "the change waits, journaled");
}

async fn a_missing_upstream_table_is_reported_by_name(mode: Mode) {
    let pair = Pair::new("missing_table", mode).await;
    pair.init().await;
    pair.upstream.connect().await.batch_execute("DROP TABLE invoice_items").await.unwrap();
    pair.local.connect().await.batch_execute("INSERT INTO branches (name) VALUES ('fine')").await.unwrap();
    let o = pair.exec(&["once"], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("invoice_items"), "{err}");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM branches").await, 1, "other tables still sync");
}

const TYPE_ZOO: &str = r#"
DO $$ BEGIN CREATE TYPE mood AS ENUM ('feliz', 'triste', 'con "comillas"'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE type_zoo (
    id uuid PRIMARY KEY,
    t text, n numeric(12,2), ts timestamptz, d date, j jsonb, js json, arr text[], e mood, b bytea,
    i integer, f float8, bo boolean, big bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

async fn zoo_rows(db: &support::TestDb, first: u32) {
    let c = db.connect().await;
    c.batch_execute(&format!(
        r#"INSERT INTO type_zoo VALUES
        ('00000000-0000-0000-0000-{a:012}', E'ñandú 🦜 中文 tab\there\nnl \x01\x1f back\\slash "q" ''s', 1234567890.12,
         '2026-03-04 05:06:07.123456+00', '2000-02-29', '{{"a": [1, 2.50, "x"], "n": {{"k": null}}, "big": 12345678901234567890}}',
         '{{"keep":   "spacing", "dup": 1, "dup": 2}}', '{{"a b","c,d","\"q\"",NULL}}', 'con "comillas"', '\x00ff10',
         -2147483648, 0.1, true, 9223372036854775807, '2026-01-01 00:00:00.000001+00'),
        ('00000000-0000-0000-0000-{b:012}', NULL, 'NaN', 'infinity', '-infinity', 'null', NULL, '{{}}', 'feliz', '\x',
         NULL, 'NaN', false, NULL, '2026-01-01 00:00:00+00'),
        ('00000000-0000-0000-0000-{c:012}', '', -0.01, '1999-12-31 23:59:59.999999-06', NULL, '[]', '[]', NULL, NULL, NULL,
         0, -1.5e300, NULL, -1, '2026-01-01 00:00:00+00')"#,
        a = first,
        b = first + 1,
        c = first + 2
    ))
    .await
    .unwrap();
}

async fn row_values_survive_the_json_round_trip_exactly(mode: Mode) {
    let mut pair = Pair::new("type_zoo", mode).await;
    for db in [&pair.local, &pair.upstream] {
        db.connect().await.batch_execute(TYPE_ZOO).await.unwrap();
    }
    pair.tables = vec!["type_zoo".into()];
    pair.write_config();
    pair.init().await;
    zoo_rows(&pair.local, 1).await; // up
    zoo_rows(&pair.upstream, 100).await; // down
    pair.once().await;
    pair.assert_converged().await;
    // Text forms too, column by column (to_jsonb would hide float formatting).
    // `json` columns travel inside the jsonb journal: their content is kept,
    // their whitespace and duplicate keys are not (documented limitation).
    let q = "SELECT string_agg(format('%s|%s|%s|%s|%s|%s', t, n, ts, js::jsonb, f, b), ';' ORDER BY id) FROM type_zoo";
    let l: String = pair.local.connect().await.query_one(q, &[]).await.unwrap().get(0);
    let u: String = pair.upstream.connect().await.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(l, u);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM type_zoo").await, 6);
}

all_modes!(a_missing_upstream_table_is_reported_by_name, row_values_survive_the_json_round_trip_exactly);

/// The RPC entry points the client calls, as `expose_api` lists them.
const ENTRY_POINTS: &str = "ARRAY['centrovision_sync_apply', 'centrovision_sync_version', 'centrovision_sync_bucket_hashes',
    'centrovision_sync_row_hashes', 'centrovision_sync_changes', 'centrovision_sync_conflicts',
    'centrovision_sync_conflict_count', 'centrovision_sync_prune', 'centrovision_sync_row_versions']";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_public_supabase_schema_syncs_both_ways_through_its_profile_with_functions_owned_by_a_non_superuser() {
    let pair = Pair::new_in_schema("rest_schema", Mode::Rest, "clinic").await;
    pair.init().await;
    let up = pair.upstream.connect().await;
    // Installed by a role that is not a superuser, as on Supabase.
    let owner = up
        .query_one(
            "SELECT p.proowner::regrole::text, r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
              WHERE p.oid = 'public.centrovision_sync_apply(jsonb, text)'::regprocedure",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((owner.get::<_, String>(0), owner.get::<_, bool>(1)), ("postgres_owner".to_owned(), false));
    // One entry point in the profile's schema per public RPC, executable by service_role only.
    let q = format!(
        "SELECT (SELECT count(*) FROM pg_proc WHERE pronamespace = 'clinic'::regnamespace AND proname = ANY ({ENTRY_POINTS})),
                (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND proname = ANY ({ENTRY_POINTS})),
                (SELECT bool_and(has_function_privilege('service_role', p.oid, 'EXECUTE')
                                 AND NOT has_function_privilege('anon', p.oid, 'EXECUTE')
                                 AND NOT has_function_privilege('authenticated', p.oid, 'EXECUTE'))
                   FROM pg_proc p WHERE pronamespace = 'clinic'::regnamespace AND proname = ANY ({ENTRY_POINTS}))"
    );
    let r = up.query_one(q.as_str(), &[]).await.unwrap();
    assert_eq!(r.get::<_, i64>(0), r.get::<_, i64>(1), "an entry point for every RPC overload");
    assert!(r.get::<_, i64>(0) >= 9);
    assert!(r.get::<_, bool>(2), "EXECUTE: service_role only");

    pair.local
        .connect()
        .await
        .batch_execute("INSERT INTO services (name, price) SELECT 'local ' || g, g FROM generate_series(1, 40) g")
        .await
        .unwrap();
    up.batch_execute(
        "INSERT INTO clinic.branches (name) VALUES ('cloud branch');
         INSERT INTO clinic.patients (branch_id, full_name) SELECT id, 'cloud patient' FROM clinic.branches;",
    )
    .await
    .unwrap();
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM clinic.services").await, 40);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM patients WHERE full_name = 'cloud patient'").await, 1);
    assert!(pair.standin().requests(APPLY) >= 1);
    // Both directions again, then verify through the entry points.
    up.batch_execute("UPDATE clinic.patients SET phone = '555'").await.unwrap();
    pair.local.connect().await.batch_execute("UPDATE services SET price = price + 1 WHERE name = 'local 1'").await.unwrap();
    pair.once().await;
    pair.assert_converged().await;
    let out = pair.exec(&["verify"], &[]).await;
    assert!(out.status.success(), "verify: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_rows_below_batch_size_every_row_arrives_including_parents_fetched_on_demand() {
    let mut pair = Pair::new("rest_max_rows", Mode::Rest).await;
    pair.tables = vec!["branches".into(), "patients".into()];
    pair.batch_size = 1000;
    pair.write_config();
    pair.init().await;
    // Every RPC answers one value (jsonb or a number), which max rows does not cut.
    let sets =
        format!("SELECT count(*) FROM pg_proc WHERE proname = ANY ({ENTRY_POINTS}) AND (proretset OR prorettype = 'record'::regtype)");
    assert_eq!(count(&pair.upstream, &sets).await, 0, "a set-returning sync RPC would be cut by max rows");
    let s = pair.standin();
    s.set_max_rows(300);
    let up = pair.upstream.connect().await;
    // 2,000 branches stamped before the clinic's old watermark, so the feed
    // leaves them out and only parent repair can bring them; 3,600 patients
    // after it, each feed page of 1,000 referring to 1,000 distinct branches
    // (more than 4 pages × 300 rows could bring if each read were cut).
    up.batch_execute(
        "INSERT INTO branches (id, name, updated_at)
           SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'old branch ' || g, '2020-01-01'
           FROM generate_series(1, 2000) g;
         INSERT INTO patients (branch_id, full_name)
           SELECT ('00000000-0000-4000-8000-' || lpad((1 + g % 2000)::text, 12, '0'))::uuid, 'patient ' || g
           FROM generate_series(0, 3599) g ORDER BY g;",
    )
    .await
    .unwrap();
    let local = pair.local.connect().await;
    local.batch_execute("UPDATE _sync_metadata SET last_sync_from_supabase = '2025-01-01'").await.unwrap();
    local.batch_execute("INSERT INTO branches (name) SELECT 'local branch ' || g FROM generate_series(1, 1100) g").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM patients").await, 3600);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM branches WHERE name LIKE 'old branch %'").await, 2000, "every parent fetched");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM branches WHERE name LIKE 'local branch %'").await, 1100);
    pair.assert_converged().await;
    // The first parent read was cut at 300 rows; the rest came in chunks of 300.
    assert!(s.requests("/rest/v1/branches") >= 5, "{} reads of branches", s.requests("/rest/v1/branches"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_upstream_in_postgres_mode_also_installs_the_entry_points_of_a_non_public_schema() {
    let pair = Pair::new_in_schema("pg_schema", Mode::Postgres, "clinic").await;
    pair.init().await;
    let q = format!("SELECT count(*) FROM pg_proc WHERE pronamespace = 'clinic'::regnamespace AND proname = ANY ({ENTRY_POINTS})");
    assert!(count(&pair.upstream, &q).await >= 9, "entry points for a later switch to REST mode");
    // Installing again (an upgrade) keeps them, once each.
    let before = count(&pair.upstream, &q).await;
    pair.ok(&["init", "--upstream"]).await;
    assert_eq!(count(&pair.upstream, &q).await, before);
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('direct')").await.unwrap();
    pair.upstream.connect().await.batch_execute("INSERT INTO clinic.services (name) VALUES ('cloud')").await.unwrap();
    pair.once().await;
    pair.assert_converged().await;
}
