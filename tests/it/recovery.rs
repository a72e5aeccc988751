//! Recovery tools: replay from a saved LSN, verify and repair drift, resync
//! after a lost slot.

use crate::support;
use crate::{all_modes, both_modes};

use std::time::Duration;

use support::sync::{Mode, Pair, count, terminate};
use support::{Cluster, ClusterOptions, wait_for};

async fn status_json(pair: &Pair) -> serde_json::Value {
    let o = pair.ok(&["status", "--json"]).await;
    serde_json::from_slice(&o.stdout).expect("status --json")
}

async fn replay_after_an_upstream_restore_makes_both_sides_equal_and_twice_changes_nothing(mode: Mode) {
    let pair = Pair::new("replay", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local.batch_execute("INSERT INTO services (name, price) SELECT 'a' || g, g FROM generate_series(1, 100) g").await.unwrap();
    pair.once().await;
    // The operator notes the LSN before the upstream backup is taken.
    let saved = status_json(&pair).await["journaled_lsn"].as_str().unwrap().to_string();
    // (A backup of the Supabase database holds the sync state with the rows.)
    up.batch_execute(
        "CREATE TABLE services_backup AS SELECT * FROM services;
         CREATE TABLE versions_backup AS SELECT * FROM centrovision_sync.row_version WHERE table_name = 'services';",
    )
    .await
    .unwrap();
    local
        .batch_execute(
            "INSERT INTO services (name, price) SELECT 'b' || g, g FROM generate_series(1, 50) g;
             UPDATE services SET price = price + 1000 WHERE name LIKE 'a1%';
             DELETE FROM services WHERE name LIKE 'a2%';",
        )
        .await
        .unwrap();
    pair.once().await;
    pair.assert_converged().await;
    // Upstream is restored from the backup: the later changes are gone.
    up.batch_execute(
        "SET session_replication_role = replica; DELETE FROM services; INSERT INTO services SELECT * FROM services_backup;
         DELETE FROM centrovision_sync.row_version WHERE table_name = 'services';
         INSERT INTO centrovision_sync.row_version SELECT * FROM versions_backup;",
    )
    .await
    .unwrap();
    assert_ne!(Pair::rows(&pair.local, "services").await, Pair::rows(&pair.upstream, "services").await);
    let dry = pair.ok(&["replay", "--from-lsn", &saved, "--dry-run"]).await;
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("would replay") && text.contains("INSERT") && text.contains("DELETE"), "{text}");
    assert_ne!(Pair::rows(&pair.local, "services").await, Pair::rows(&pair.upstream, "services").await, "dry run sent something");
    pair.ok(&["replay", "--from-lsn", &saved]).await;
    pair.assert_converged().await;
    let before = Pair::rows(&pair.upstream, "services").await;
    pair.ok(&["replay", "--from-lsn", &saved]).await;
    assert_eq!(before, Pair::rows(&pair.upstream, "services").await, "a second replay changed upstream");
    let v = pair.exec(&["verify"], &[]).await;
    assert_eq!(v.status.code(), Some(0), "{}", String::from_utf8_lossy(&v.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_an_lsn_older_than_the_retained_history() {
    let pair = Pair::new("replay_pruned", Mode::Postgres).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('x')").await.unwrap();
    pair.once().await;
    // Retention pruned everything up to the current position.
    pair.local.journal().connect().await.batch_execute("UPDATE _sync_capture SET pruned_through_lsn = journaled_lsn").await.unwrap();
    let o = pair.exec(&["replay", "--from-lsn", "0/1"], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("oldest replayable LSN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recovery_arguments_exit_2_with_a_clear_message() {
    let pair = Pair::new("recovery_args", Mode::Postgres).await;
    for (args, needle) in [
        (vec!["replay", "--from-lsn", "not-an-lsn"], "X/Y"),
        (vec!["replay", "--from-lsn", "0/0", "--table", "nope"], "unknown table \"nope\""),
        (vec!["verify", "--table", "nope"], "unknown table"),
    ] {
        let o = pair.exec(&args, &[]).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

async fn verify_finds_single_differences_in_100k_rows_and_repair_fixes_them(mode: Mode) {
    let mut pair = Pair::new("verify_100k", mode).await;
    pair.tables = vec!["branches".into(), "services".into()];
    pair.write_config();
    // The same 100k rows on both sides, loaded before the slot exists.
    let load = "SET session_replication_role = replica;
        INSERT INTO services (id, name, price, created_at, updated_at)
        SELECT md5(g::text)::uuid, 'service ' || g, g % 1000 + 0.25, '2026-01-01', '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 ms'
        FROM generate_series(1, 100000) g;";
    pair.local.connect().await.batch_execute(load).await.unwrap();
    pair.upstream.connect().await.batch_execute(load).await.unwrap();
    pair.init().await;
    let equal = pair.exec(&["verify", "--json"], &[]).await;
    assert_eq!(equal.status.code(), Some(0), "{}", String::from_utf8_lossy(&equal.stdout));
    let report: serde_json::Value = serde_json::from_slice(&equal.stdout).unwrap();
    assert_eq!(report["equal"], true);

    let up = pair.upstream.connect().await;
    let local = pair.local.connect().await;
    // One column of one row edited upstream in the SQL editor (same
    // updated_at), one row deleted there: both are versions of the cloud
    // writer, which the change feed brings down.
    up.batch_execute("UPDATE services SET name = 'edited' WHERE id = md5('500')::uuid").await.unwrap();
    up.batch_execute("DELETE FROM services WHERE id = md5('700')::uuid").await.unwrap();
    // One row lost upstream without a trace (row and sync state gone, as
    // after a partial restore).
    up.batch_execute(
        "SET session_replication_role = replica; DELETE FROM services WHERE id = md5('800')::uuid;
         DELETE FROM centrovision_sync.row_version WHERE table_name = 'services' AND pk = md5('800')::uuid::text;",
    )
    .await
    .unwrap();
    // One row deleted locally.
    local.batch_execute("DELETE FROM services WHERE id = md5('900')::uuid").await.unwrap();
    let drift = pair.exec(&["verify", "--json"], &[]).await;
    assert_eq!(drift.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&drift.stdout).unwrap();
    let svc = r["tables"].as_array().unwrap().iter().find(|t| t["table"] == "services").unwrap();
    let id = |g: &str| -> String { format!("{:x}", md5_uuid(g)) };
    let mut only_local = vec![id("700"), id("800")];
    only_local.sort();
    assert_eq!(svc["differ"], serde_json::json!([id("500")]), "{svc}");
    assert_eq!(svc["only_local"], serde_json::json!(only_local), "{svc}");
    assert_eq!(svc["only_upstream"], serde_json::json!([id("900")]), "{svc}");

    let fixed = pair.exec(&["verify", "--repair"], &[]).await;
    assert_eq!(fixed.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&fixed.stdout), String::from_utf8_lossy(&fixed.stderr));
    pair.assert_converged().await;
    // The local delete went up (tombstone), the upstream edit and delete
    // came down, and the row upstream had lost without a trace went back.
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE id = md5('900')::uuid").await, 0);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE id = md5('700')::uuid").await, 0);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE id = md5('800')::uuid").await, 1);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'edited'").await, 1);
    assert_eq!(pair.exec(&["verify"], &[]).await.status.code(), Some(0));
}

/// `verify --repair` pulls the rows only upstream has in chunks of
/// `batch_size`; on a project whose max rows is below that each read is cut,
/// and every row still arrives.
async fn repair_brings_down_more_rows_than_one_upstream_read_returns(mode: Mode) {
    let mut pair = Pair::new("repair_pull", mode).await;
    pair.tables = vec!["branches".into(), "services".into()];
    pair.write_config();
    pair.init().await;
    // 700 rows upstream with no trace in the change feed (written with the
    // triggers off, as after a partial restore): only a repair brings them.
    pair.upstream
        .connect()
        .await
        .batch_execute(
            "SET session_replication_role = replica;
             INSERT INTO services (id, name, price) SELECT md5(g::text)::uuid, 'restored ' || g, g FROM generate_series(1, 700) g;",
        )
        .await
        .unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 0, "the feed brought them: nothing left to repair");
    let fixed = pair.exec(&["verify", "--repair"], &[]).await;
    assert_eq!(fixed.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&fixed.stdout), String::from_utf8_lossy(&fixed.stderr));
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name LIKE 'restored %'").await, 700);
    pair.assert_converged().await;
    if mode == Mode::RestClinicSchemaLowMaxRows {
        assert!(pair.standin().capped_reads() > 0, "no read of the rows was cut at max rows: this variant tests nothing more");
    }
    assert_eq!(pair.exec(&["verify"], &[]).await.status.code(), Some(0));
}

/// The uuid PostgreSQL's md5(text)::uuid gives, as printed by ::text.
fn md5_uuid(s: &str) -> UuidText {
    UuidText(s.to_string())
}

struct UuidText(String);

impl std::fmt::LowerHex for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s '{}' | md5sum", self.0)).output().unwrap();
        let h = String::from_utf8_lossy(&out.stdout)[..32].to_string();
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

async fn resync_after_the_slot_was_dropped_loses_no_local_change(mode: Mode) {
    let pair = Pair::new("resync_dropped", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    local.batch_execute("INSERT INTO services (name, price) SELECT 'before ' || g, g FROM generate_series(1, 20) g").await.unwrap();
    let mut child = pair.spawn_run(&[]);
    pair.wait_converged(Duration::from_secs(60)).await;
    // Let the down path pass the pushed rows (its watermark moves past them).
    wait_for("the watermark past the pushed rows", Duration::from_secs(60), || async {
        let ok: bool = local
            .query_one(
                "SELECT coalesce(last_sync_from_supabase >= (SELECT max(updated_at) FROM services), false) FROM _sync_metadata WHERE table_name = 'services'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        ok.then_some(())
    })
    .await;
    // The slot disappears under the service.
    let slot = pair.slot.clone();
    wait_for("the slot dropped", Duration::from_secs(30), || async {
        let _ = local
            .execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
            .await;
        local.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.ok()
    })
    .await;
    // Changes while the slot is gone: none of them reach the journal.
    local
        .batch_execute(
            "INSERT INTO services (name) VALUES ('while gone');
             UPDATE services SET price = 999 WHERE name = 'before 1';
             DELETE FROM services WHERE name = 'before 2';",
        )
        .await
        .unwrap();
    wait_for("the slot-missing alert", Duration::from_secs(60), || async {
        pair.run_log().contains("ALERT: replication slot").then_some(())
    })
    .await;
    terminate(&mut child);
    let log = pair.run_log();
    assert!(log.contains("centrovision-sync resync"), "the alert must give the recovery steps");
    pair.ok(&["resync"]).await;
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'while gone'").await, 1);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'before 1' AND price = 999").await, 1);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'before 2'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_the_slot_was_invalidated_by_max_slot_wal_keep_size() {
    let local_cluster = Cluster::start(ClusterOptions {
        extra_conf: vec![
            "max_slot_wal_keep_size = 1MB".into(),
            "wal_keep_size = 0".into(),
            "max_wal_size = 32MB".into(),
            "min_wal_size = 32MB".into(),
        ],
        ..Default::default()
    });
    let local = local_cluster.create_database("resync_lost_l").await;
    let upstream = Cluster::shared().create_database("resync_lost_u").await;
    let pair = Pair::on(local, upstream, Mode::Postgres).await;
    pair.init().await;
    let c = pair.local.connect().await;
    c.batch_execute("INSERT INTO services (name) VALUES ('before')").await.unwrap();
    pair.once().await;
    // The service is down for long: WAL piles up past the limit.
    c.batch_execute("INSERT INTO services (name) VALUES ('during the outage')").await.unwrap();
    for _ in 0..4 {
        c.batch_execute(
            "INSERT INTO audit_trail (what) SELECT repeat('w', 500) FROM generate_series(1, 5000); SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
    }
    let status: Option<String> =
        c.query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&pair.slot]).await.unwrap().get(0);
    assert_eq!(status.as_deref(), Some("lost"), "the test did not invalidate the slot");
    let st = status_json(&pair).await;
    assert_eq!(st["slot"]["wal_status"], "lost");
    let o = pair.exec(&["once"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "once must refuse a lost slot");
    pair.ok(&["resync"]).await;
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'during the outage'").await, 1);
}

/// Upstream verify functions of an earlier version hash rows another way:
/// `verify` says to update them instead of reporting every row as different,
/// and repairs nothing.
async fn verify_against_upstream_hashes_of_another_scheme_asks_for_init_upstream(mode: Mode) {
    let pair = Pair::new("verify_scheme", mode).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) SELECT 'svc ' || g FROM generate_series(1, 20) g").await.unwrap();
    pair.once().await;
    assert_eq!(pair.exec(&["verify"], &[]).await.status.code(), Some(0), "equal before the old functions");
    // The first scheme's answer: no "scheme" key (and md5-based hashes).
    let s = &pair.upstream_schema;
    pair.upstream
        .connect()
        .await
        .batch_execute(&format!(
            "ALTER FUNCTION public.centrovision_sync_bucket_hashes(text, text, text, text[], integer) RENAME TO cvs_bucket_hashes_v2;
             CREATE FUNCTION public.centrovision_sync_bucket_hashes(s text, t text, pk text, cols text[], buckets integer)
             RETURNS jsonb LANGUAGE sql SECURITY DEFINER SET search_path = '' AS
             $f$ SELECT public.cvs_bucket_hashes_v2(s, t, pk, cols, buckets) - 'scheme' $f$;
             GRANT EXECUTE ON FUNCTION public.centrovision_sync_bucket_hashes(text, text, text, text[], integer) TO service_role;
             SELECT 1 FROM pg_namespace WHERE nspname = '{s}';"
        ))
        .await
        .unwrap();
    let o = pair.exec(&["verify", "--repair"], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("upstream verify functions hash rows another way") && err.contains("init --upstream"), "{err}");
    assert_eq!(count(&pair.upstream, &format!("SELECT count(*) FROM {s}.services")).await, 20, "nothing repaired");
}

both_modes!(
    verify_against_upstream_hashes_of_another_scheme_asks_for_init_upstream,
    replay_after_an_upstream_restore_makes_both_sides_equal_and_twice_changes_nothing,
    verify_finds_single_differences_in_100k_rows_and_repair_fixes_them,
    resync_after_the_slot_was_dropped_loses_no_local_change,
);

all_modes!(repair_brings_down_more_rows_than_one_upstream_read_returns);
