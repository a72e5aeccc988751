//! Down path against real clusters: upstream rows come down without echo,
//! both sides converge, and crashes lose nothing.

use crate::all_modes;
use crate::support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::sync::{Mode, Pair, count};
use tokio_postgres::Client;

/// Writes on `up` as another clinic would: triggers on, now() timestamps.
async fn upstream_writes(up: &Client, n: usize, tag: &str) {
    up.batch_execute(&format!(
        "INSERT INTO branches (name) SELECT '{tag} branch ' || g FROM generate_series(1, 3) g;
         INSERT INTO patients (branch_id, full_name, tags, metadata, birth_date, photo, notes)
         SELECT (SELECT id FROM branches ORDER BY random() LIMIT 1), '{tag} ' || g || ' ñandú 🦜',
                ARRAY['x', 'y z'], jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 2.50, 'tres')),
                '2000-02-29', '\\x00ff10'::bytea, E'line1\\nline2\\t\"quoted\"'
         FROM generate_series(1, {n}) g;"
    ))
    .await
    .unwrap();
}

async fn upstream_rows_arrive_identically_and_are_not_echoed(mode: Mode) {
    let pair = Pair::new("down_basic", mode).await;
    pair.init().await;
    let up = pair.upstream.connect().await;
    upstream_writes(&up, 250, "cloud").await;
    up.batch_execute("INSERT INTO services (name, price) VALUES ('consulta', 1234.50), ('examen', 0.01)").await.unwrap();
    pair.once().await;
    pair.assert_converged().await;
    // Several cycles with upstream updates: still no journal entries.
    for round in 0..3 {
        up.batch_execute(&format!("UPDATE patients SET phone = 'r{round}' WHERE full_name LIKE 'cloud 1%'")).await.unwrap();
        pair.once().await;
        pair.assert_converged().await;
    }
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending").await, 0, "down-path writes were journaled (echo)");
    // updated_at is identical, not re-stamped by the local trigger.
    let l: String = pair.local.connect().await.query_one("SELECT max(updated_at)::text FROM patients", &[]).await.unwrap().get(0);
    let u: String = up.query_one("SELECT max(updated_at)::text FROM patients", &[]).await.unwrap().get(0);
    assert_eq!(l, u);
}

/// One effective write: when, and the row image it left (None: deleted).
struct Write {
    at: String,
    image: Option<String>,
}

async fn both_sides_converge_under_a_random_two_way_workload(mode: Mode) {
    let pair = Pair::new("two_way", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    let mut rng = StdRng::seed_from_u64(42);
    let ids: Vec<String> = (0..40).map(|i| format!("00000000-0000-0000-0000-{i:012}")).collect();
    let mut latest: std::collections::HashMap<String, Write> = Default::default();
    for _round in 0..5 {
        for _ in 0..60 {
            let on_local = rng.random_bool(0.5);
            let side = if on_local { &local } else { &up };
            let id = ids[rng.random_range(0..ids.len())].clone();
            // Realistic writes: timestamps from now() via the tables' triggers;
            // hard deletes happen locally, upstream deletes are soft (deleted_at).
            let (sql, deletes) = match rng.random_range(0..10) {
                0..=3 => (
                    format!(
                        "INSERT INTO services (id, name, price) VALUES ('{id}', 'v{}', {})
                         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, deleted_at = NULL
                         RETURNING clock_timestamp()::text",
                        rng.random::<u16>(),
                        rng.random_range(0..1000)
                    ),
                    false,
                ),
                4..=6 => (format!("UPDATE services SET price = price + 1 WHERE id = '{id}' RETURNING clock_timestamp()::text"), false),
                7 => (format!("UPDATE services SET deleted_at = now() WHERE id = '{id}' RETURNING clock_timestamp()::text"), false),
                _ if on_local => (format!("DELETE FROM services WHERE id = '{id}' RETURNING clock_timestamp()::text"), true),
                _ => (format!("UPDATE services SET deleted_at = now() WHERE id = '{id}' RETURNING clock_timestamp()::text"), false),
            };
            let Some(row) = side.query_opt(sql.as_str(), &[]).await.unwrap() else { continue };
            let at: String = row.get(0);
            let image: Option<String> = if deletes {
                None
            } else {
                side.query_opt("SELECT to_jsonb(s)::text FROM services s WHERE id = $1::text::uuid", &[&id])
                    .await
                    .unwrap()
                    .map(|r| r.get(0))
            };
            latest.insert(id, Write { at, image });
        }
        pair.once().await;
    }
    pair.once().await;
    pair.assert_converged().await;
    // Every row is its latest write (row-level last-write-wins).
    for (id, w) in &latest {
        let now: Option<String> =
            local.query_opt("SELECT to_jsonb(s)::text FROM services s WHERE id = $1::text::uuid", &[id]).await.unwrap().map(|r| r.get(0));
        let parse = |s: &Option<String>| s.as_ref().map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
        assert_eq!(parse(&now), parse(&w.image), "row {id}: latest write at {} not kept", w.at);
    }
}

async fn a_conflicted_row_ends_as_its_latest_write_on_both_sides(mode: Mode) {
    let pair = Pair::new("conflict_both", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local
        .batch_execute(
            "INSERT INTO services (id, name, updated_at) VALUES
        ('00000000-0000-0000-0000-00000000000a', 'local old', '2026-01-01'),
        ('00000000-0000-0000-0000-00000000000b', 'local new', '2026-01-03')",
        )
        .await
        .unwrap();
    up.batch_execute(
        "SET session_replication_role = replica;
        INSERT INTO services (id, name, updated_at) VALUES
        ('00000000-0000-0000-0000-00000000000a', 'up new', '2026-01-02'),
        ('00000000-0000-0000-0000-00000000000b', 'up old', '2026-01-02')",
    )
    .await
    .unwrap();
    pair.once().await;
    pair.assert_converged().await;
    let names: Vec<String> = local.query("SELECT name FROM services ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["up new", "local new"]);
}

async fn a_long_upstream_transaction_with_an_older_updated_at_is_still_applied(mode: Mode) {
    let pair = Pair::new("long_txn", mode).await;
    pair.init().await;
    let up = pair.upstream.connect().await;
    let late = pair.upstream.connect().await;
    // The long transaction takes its now() first...
    late.batch_execute("BEGIN; INSERT INTO services (name) VALUES ('late')").await.unwrap();
    // ...a later one commits and is polled, moving the watermark past it...
    up.batch_execute("INSERT INTO services (name) VALUES ('early')").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'early'").await, 1);
    // ...then the long one commits with its older updated_at.
    late.batch_execute("COMMIT").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'late'").await, 1);
    pair.assert_converged().await;
}

async fn children_whose_parents_are_missing_locally_are_applied_with_their_parents(mode: Mode) {
    let mut pair = Pair::new("parents", mode).await;
    // Only children are polled; parents come on demand.
    pair.tables = vec!["branches".into(), "patients".into(), "appointments".into()];
    pair.write_config();
    pair.init().await;
    let up = pair.upstream.connect().await;
    // One child of an old branch, and 400 more children of 400 other old
    // branches: one page of children (batch_size 500) wanting more parents
    // than a lowered max rows (300) lets one read bring.
    up.batch_execute(
        "INSERT INTO branches (id, name, updated_at) VALUES ('00000000-0000-0000-0000-0000000000b1', 'old branch', '2020-01-01');
         INSERT INTO patients (id, branch_id, full_name) VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-0000000000b1', 'child');
         INSERT INTO branches (id, name, updated_at)
           SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'old branch ' || g, '2020-01-01'
           FROM generate_series(1, 400) g;
         INSERT INTO patients (branch_id, full_name)
           SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'child ' || g FROM generate_series(1, 400) g;",
    )
    .await
    .unwrap();
    // Move the clinic's old watermark past the old branches (the children
    // are stamped after it), so the feed leaves the branches out, as if
    // they had been missed: only parent repair can bring them.
    pair.local.connect().await.batch_execute("UPDATE _sync_metadata SET last_sync_from_supabase = '2025-01-01'").await.unwrap();
    let out = pair.once().await;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("fetched missing parents"), "the parents came some other way than on demand:\n{}", support::sync::tail(&log, 40));
    assert_eq!(count(&pair.local, "SELECT count(*) FROM branches WHERE name = 'old branch'").await, 1);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM patients WHERE full_name = 'child'").await, 1);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM branches WHERE name LIKE 'old branch %'").await, 400, "every parent fetched");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM patients WHERE full_name LIKE 'child %'").await, 400);
    if mode == Mode::RestClinicSchemaLowMaxRows {
        // The parents came although a read of them was cut at max rows.
        assert!(pair.standin().capped_reads() > 0, "no read of the parents was cut at max rows: this variant tests nothing more");
    }
    pair.assert_converged().await;
}

async fn a_row_deleted_locally_is_not_resurrected_by_an_older_upstream_version(mode: Mode) {
    let pair = Pair::new("no_resurrect", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    up.batch_execute("INSERT INTO services (id, name) VALUES ('00000000-0000-0000-0000-0000000000d1', 'doomed')").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 1);
    local.batch_execute("DELETE FROM services").await.unwrap();
    // Upstream still has the older version; the watermark is rewound so the
    // poller sees it again before the delete is pushed.
    local.batch_execute("UPDATE _sync_metadata SET last_sync_from_supabase = NULL, last_sync_from_supabase_id = NULL").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 0);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 0);
}

async fn a_crash_mid_download_loses_nothing_and_applies_nothing_twice(mode: Mode) {
    let mut pair = Pair::new("down_crash", mode).await;
    pair.sync_extra = String::new();
    pair.write_config();
    pair.init().await;
    let up = pair.upstream.connect().await;
    up.batch_execute("INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 2600) g").await.unwrap();
    // batch_size 500: crash after the second page commits.
    let out = pair.exec(&["once"], &[("CENTROVISION_SYNC_CRASH_AT", "down.after_page_commit:2")]).await;
    assert!(!out.status.success());
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 1000);
    pair.once().await;
    pair.assert_converged().await;
    // Exactly the rows, each once, and the counter agrees.
    assert_eq!(count(&pair.local, "SELECT records_synced_down FROM _sync_metadata WHERE table_name = 'services'").await, 2600);
}

/// `status`'s text.
async fn status_text(pair: &Pair) -> String {
    String::from_utf8_lossy(&pair.ok(&["status"]).await.stdout).to_string()
}

async fn an_upstream_row_the_local_table_rejects_is_parked_and_the_rest_of_the_table_keeps_moving(mode: Mode) {
    let pair = Pair::new("down_park", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    // A local CHECK upstream lacks, and a column typed differently on each side.
    local
        .batch_execute("ALTER TABLE services ADD CONSTRAINT price_cap CHECK (price < 1000); ALTER TABLE services ADD COLUMN code int")
        .await
        .unwrap();
    up.batch_execute("ALTER TABLE services ADD COLUMN code text").await.unwrap();
    up.batch_execute(
        "INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 30) g;
         INSERT INTO services (name, price) VALUES ('lujo', 5000), ('caro', 2000);
         INSERT INTO services (name, price, code) VALUES ('rara', 1, 'X1');
         INSERT INTO services (name, price, code) SELECT 'late ' || g, g, g::text FROM generate_series(1, 30) g;",
    )
    .await
    .unwrap();
    pair.once().await;
    // The other rows arrive; the three the local table rejects are parked with their error.
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 60, "the rest of the table arrives");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name IN ('lujo', 'caro', 'rara')").await, 0);
    let parked: Vec<String> =
        local.query("SELECT error FROM _sync_down_parked ORDER BY error", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(parked.len(), 3, "only the rejected rows are parked: {parked:#?}");
    assert_eq!(parked.iter().filter(|e| e.contains("price_cap") && e.contains("23514")).count(), 2, "{parked:#?}");
    assert_eq!(parked.iter().filter(|e| e.contains("22P02")).count(), 1, "the type mismatch: {parked:#?}");
    let status = status_text(&pair).await;
    assert!(status.contains("down: 3 upstream row(s) of services parked"), "{status}");
    assert!(status.contains("in sync: NO"), "{status}");
    // The cursor moved past them: a later upstream row arrives; they stay parked (retried, rejected again).
    up.batch_execute("INSERT INTO services (name, price) VALUES ('after', 1)").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'after'").await, 1);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked WHERE attempts = 2").await, 3, "retried on the next cycle");
    // Fixed upstream: the newer versions arrive and their entries are cleared.
    up.batch_execute("UPDATE services SET price = 20 WHERE name = 'caro'; UPDATE services SET code = '7' WHERE name = 'rara'")
        .await
        .unwrap();
    pair.once().await;
    assert_eq!(
        count(&pair.local, "SELECT count(*) FROM services WHERE (name, price) = ('caro', 20) OR (name, code) = ('rara', 7)").await,
        2
    );
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked").await, 1, "only lujo is still parked");
    // Fixed locally: the parked version itself applies on a later cycle and the entry is cleared.
    local.batch_execute("ALTER TABLE services DROP CONSTRAINT price_cap").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'lujo' AND price = 5000").await, 1);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked").await, 0, "the entry is cleared once it applies");
    let status = status_text(&pair).await;
    assert!(!status.contains("down: ") && status.contains("in sync: yes"), "{status}");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 64);
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending").await, 0, "no echo of the retried rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_upstream_row_never_overwrites_a_later_local_change_to_it() {
    let pair = Pair::new("down_park_superseded", Mode::Postgres).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    up.batch_execute("INSERT INTO services (name, price) VALUES ('x', 10)").await.unwrap();
    pair.once().await;
    local.batch_execute("ALTER TABLE services ADD CONSTRAINT price_cap CHECK (price < 1000)").await.unwrap();
    up.batch_execute("UPDATE services SET price = 5000 WHERE name = 'x'").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked").await, 1, "the upstream edit is parked");
    // The clinic edits the row afterwards: its change goes up and wins there;
    // the parked, older upstream version is dropped, never applied over it.
    local.batch_execute("UPDATE services SET price = 20 WHERE name = 'x'").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked").await, 0, "superseded by the local change");
    local.batch_execute("ALTER TABLE services DROP CONSTRAINT price_cap").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT price::int8 FROM services WHERE name = 'x'").await, 20);
    assert_eq!(count(&pair.upstream, "SELECT price::int8 FROM services WHERE name = 'x'").await, 20, "the later local edit won upstream");
    pair.assert_converged().await;
}

all_modes!(
    an_upstream_row_the_local_table_rejects_is_parked_and_the_rest_of_the_table_keeps_moving,
    upstream_rows_arrive_identically_and_are_not_echoed,
    both_sides_converge_under_a_random_two_way_workload,
    a_conflicted_row_ends_as_its_latest_write_on_both_sides,
    a_long_upstream_transaction_with_an_older_updated_at_is_still_applied,
    children_whose_parents_are_missing_locally_are_applied_with_their_parents,
    a_row_deleted_locally_is_not_resurrected_by_an_older_upstream_version,
    a_crash_mid_download_loses_nothing_and_applies_nothing_twice,
);
