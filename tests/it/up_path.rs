//! Up path against real clusters: WAL capture → journal → upstream.

use crate::all_modes;
use crate::support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::sync::{Mode, Pair, count, kill9};
use support::{Cluster, wait_for};
use tokio_postgres::Client;

/// Applies `n` random row changes over several tables in transactions of
/// 1..=20 statements; returns how many row changes were made.
async fn mixed_workload(c: &Client, seed: u64, n: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut made = 0;
    c.batch_execute("INSERT INTO branches (name) SELECT 'branch ' || g FROM generate_series(1, 5) g").await.unwrap();
    made += 5;
    while made < n {
        let stmts = rng.random_range(1..=20);
        let mut sql = String::from("BEGIN;");
        for _ in 0..stmts {
            match rng.random_range(0..10) {
                0..=4 => sql.push_str(&format!(
                    "INSERT INTO patients (branch_id, full_name, tags, metadata, birth_date)
                     SELECT id, 'patient {}', ARRAY['a','b{}'], '{{\"k\": {}}}', '1990-01-01'::date + {} FROM branches ORDER BY random() LIMIT 1;",
                    rng.random::<u32>(),
                    rng.random::<u8>(),
                    rng.random::<u16>(),
                    rng.random_range(0..9000)
                )),
                5..=7 => sql.push_str(&format!(
                    "UPDATE patients SET phone = '{}', notes = coalesce(notes, '') || 'x' WHERE id = (SELECT id FROM patients ORDER BY random() LIMIT 1);",
                    rng.random::<u32>()
                )),
                8 => sql.push_str(
                    "DELETE FROM patients WHERE id = (SELECT id FROM patients ORDER BY random() LIMIT 1);",
                ),
                _ => sql.push_str(&format!(
                    "INSERT INTO services (name, price) VALUES ('svc {}', {}.{:02});",
                    rng.random::<u32>(),
                    rng.random_range(0..100000),
                    rng.random_range(0..100)
                )),
            }
        }
        sql.push_str("COMMIT;");
        c.batch_execute(&sql).await.unwrap();
        // Each statement above changes at most one row; count by the journal later.
        made += stmts;
    }
    made
}

/// On divergence, prints what the journal says about rows missing upstream.
async fn diagnose_missing(pair: &Pair, table: &str) {
    let l = pair.local.connect().await;
    let j = pair.local.journal().connect().await;
    let u = pair.upstream.connect().await;
    let lids: Vec<String> = l.query(&format!("SELECT id::text FROM {table}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let uids: std::collections::HashSet<String> =
        u.query(&format!("SELECT id::text FROM {table}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let missing: Vec<&String> = lids.iter().filter(|i| !uids.contains(*i)).take(3).collect();
    for id in missing {
        let rows = j
            .query(
                "SELECT id, operation, synced, commit_lsn::text, ordinal, parked_at IS NOT NULL, error, xid FROM _sync_pending WHERE record_id = $1 ORDER BY id",
                &[id],
            )
            .await
            .unwrap();
        eprintln!("missing upstream {id}: {} journal rows", rows.len());
        for r in rows {
            eprintln!(
                "   j{} {} synced={} lsn={} ord={} parked={} err={:?} xid={}",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, bool>(2),
                r.get::<_, String>(3),
                r.get::<_, i32>(4),
                r.get::<_, bool>(5),
                r.get::<_, Option<String>>(6),
                r.get::<_, i64>(7)
            );
        }
        let xmin: String = l.query_one(&format!("SELECT xmin::text FROM {table} WHERE id = $1::text::uuid"), &[id]).await.unwrap().get(0);
        eprintln!("   local row xmin {xmin}");
    }
    let cap = j.query_one("SELECT journaled_lsn::text, confirmed_end_lsn::text FROM _sync_capture", &[]).await.unwrap();
    eprintln!("capture state: journaled {} confirmed_end {}", cap.get::<_, String>(0), cap.get::<_, String>(1));
}

async fn ten_thousand_mixed_changes_reach_upstream_identically(mode: Mode) {
    let pair = Pair::new("ten_thousand", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    mixed_workload(&local, 7, 10_000).await;
    pair.once().await;
    pair.assert_converged().await;
    let patients = count(&pair.local, "SELECT count(*) FROM patients").await;
    assert!(patients > 1000, "workload too small: {patients} patients");
    // Everything journaled is synced, and nothing was journaled twice.
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE NOT synced").await, 0);
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)) FROM _sync_pending").await, 0);
}

async fn each_row_change_is_journaled_exactly_once_across_crashes(mode: Mode) {
    let pair = Pair::new("crash_points", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    // Count row changes exactly with a per-statement workload we control.
    local.batch_execute("INSERT INTO branches (name) SELECT 'b' || g FROM generate_series(1, 3) g").await.unwrap();
    let mut expected = 3i64;
    for (round, point) in [
        "capture.mid_transaction",
        "capture.after_journal_commit",
        "push.after_upstream_apply",
        "push.after_upstream_apply:2",
        "push.after_journal_marks:2",
    ]
    .iter()
    .enumerate()
    {
        for txn in 0..20 {
            local
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO patients (full_name, notes) SELECT 'p{round}-{txn}-' || g, repeat('n', 10) FROM generate_series(1, 50) g;
                     UPDATE patients SET phone = '{round}' WHERE full_name LIKE 'p{round}-{txn}-1%';
                     COMMIT;"
                ))
                .await
                .unwrap();
        }
        expected += 20 * (50 + 11); // 50 inserts, 11 updates (-1, -10..-19) per txn
        let out = pair.exec(&["once"], &[("CENTROVISION_SYNC_CRASH_AT", point)]).await;
        assert!(!out.status.success(), "crash point {point} was not reached: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A clean run after the crashes finishes the job.
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending").await, expected);
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE NOT synced").await, 0);
}

async fn sigkill_of_a_running_service_loses_nothing(mode: Mode) {
    let pair = Pair::new("sigkill_run", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let mut made = 0;
    for round in 0..3u64 {
        let mut child = pair.spawn_run(&[]);
        made += mixed_workload(&local, 100 + round, 1_500).await;
        // Kill once part of the round is upstream: mid-stream, mid-push.
        wait_for("some rows upstream", Duration::from_secs(60), || async {
            (count(&pair.upstream, "SELECT count(*) FROM patients").await > 0).then_some(())
        })
        .await;
        kill9(&mut child);
    }
    assert!(made > 0);
    pair.once().await;
    diagnose_missing(&pair, "patients").await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)) FROM _sync_pending").await, 0);
}

async fn an_update_that_leaves_a_toasted_column_unchanged_does_not_touch_it_upstream(mode: Mode) {
    let pair = Pair::new("toast", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    // > 8 kB and incompressible: stored out of line, sent as 'unchanged'.
    local
        .batch_execute(
            "INSERT INTO patients (full_name, notes)
             SELECT 'toasted', string_agg(md5(random()::text), '') FROM generate_series(1, 600)",
        )
        .await
        .unwrap();
    pair.once().await;
    pair.assert_converged().await;
    local.batch_execute("UPDATE patients SET phone = '555' WHERE full_name = 'toasted'").await.unwrap();
    // The journal holds the filled image, not a NULL.
    pair.once().await;
    pair.assert_converged().await;
    let up = pair.upstream.connect().await;
    let len: i32 =
        up.query_one("SELECT length(notes) FROM patients WHERE full_name = 'toasted' AND phone = '555'", &[]).await.unwrap().get(0);
    assert_eq!(len, 600 * 32);

    // Upstream restored without the row: the update alone must recreate it whole.
    up.batch_execute("DELETE FROM patients").await.unwrap();
    local.batch_execute("UPDATE patients SET phone = '556' WHERE full_name = 'toasted'").await.unwrap();
    pair.once().await;
    pair.assert_converged().await;
}

async fn a_column_added_mid_stream_is_carried_or_parked_by_name(mode: Mode) {
    let pair = Pair::new("add_column", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    let mut child = pair.spawn_run(&[]);
    local.batch_execute("INSERT INTO branches (name) VALUES ('before')").await.unwrap();
    // Upstream has the new column too: carried.
    up.batch_execute("ALTER TABLE branches ADD COLUMN region text").await.unwrap();
    local.batch_execute("ALTER TABLE branches ADD COLUMN region text").await.unwrap();
    local.batch_execute("INSERT INTO branches (name, region) VALUES ('after', 'norte')").await.unwrap();
    wait_for("the new column upstream", Duration::from_secs(60), || async {
        let n = count(&pair.upstream, "SELECT count(*) FROM branches WHERE region = 'norte'").await;
        (n == 1).then_some(())
    })
    .await;
    // Upstream lacks it: the row is parked with an error naming the column.
    local.batch_execute("ALTER TABLE branches ADD COLUMN manager text").await.unwrap();
    local.batch_execute("INSERT INTO branches (name, manager) VALUES ('lacking', 'ana')").await.unwrap();
    let error: String = wait_for("the row parked", Duration::from_secs(60), || async {
        let c = pair.local.journal().connect().await;
        c.query_opt("SELECT error FROM _sync_pending WHERE parked_at IS NOT NULL", &[]).await.unwrap().map(|r| r.get(0))
    })
    .await;
    kill9(&mut child);
    assert!(error.contains("manager"), "{error}");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM branches WHERE name = 'lacking'").await, 0);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM branches WHERE name = 'before'").await, 1);
}

/// Makes every row written to upstream `services` cost `per_row` seconds
/// (`slow_name`: only rows of that name, `also` more), even under the apply's
/// replica mode, and gives the upstream database a `statement_timeout`.
async fn slow_upstream_services(pair: &Pair, when: &str, sleep_secs: f64, timeout: &str) {
    let up = pair.upstream.connect().await;
    up.batch_execute(&format!(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF {when} THEN PERFORM pg_sleep({sleep_secs}); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow_row BEFORE INSERT OR UPDATE ON services FOR EACH ROW EXECUTE FUNCTION slow_row();
         ALTER TABLE services ENABLE ALWAYS TRIGGER slow_row;
         ALTER DATABASE {db} SET statement_timeout = '{timeout}'",
        db = pair.upstream.name
    ))
    .await
    .unwrap();
}

/// The pusher's split decisions in a run's log: rows of each refused call.
fn refused_calls(log: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains("upstream cannot take this batch as it is")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_hits_the_statement_timeout_settles_on_a_working_size_within_three_attempts() {
    let pair = Pair::new("split_timeout", Mode::Postgres).await;
    pair.init().await;
    // 10 ms a row under a 1 s timeout: the 300-row batch (3 s) can never
    // succeed; about 50 rows fit.
    slow_upstream_services(&pair, "true", 0.01, "1s").await;
    pair.local
        .connect()
        .await
        .batch_execute("INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 300) g")
        .await
        .unwrap();
    let out = pair.once().await;
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 300, "every row arrives");
    pair.assert_converged().await;
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE parked_at IS NOT NULL").await, 0, "nothing parked");
    // Attempts to settle: the 300-row call times out, the probe and the
    // estimate go through (a loaded machine may cost one more refusal).
    let refused = refused_calls(&log);
    eprintln!("refused calls ({}):\n{}", refused.len(), refused.join("\n"));
    assert!(!refused.is_empty() && refused.len() <= 2, "settled within three attempts: {refused:#?}");
    assert!(refused[0].contains("rows=300"), "the whole batch was tried first: {}", refused[0]);
    let status = String::from_utf8_lossy(&pair.ok(&["status"]).await.stdout).to_string();
    let note = status.lines().find(|l| l.starts_with("push: batch size reduced to ")).unwrap_or_else(|| panic!("{status}"));
    assert!(note.contains("after statement timeout (configured 500)"), "{note}");
    let settled: u64 = note["push: batch size reduced to ".len()..].split(' ').next().unwrap().parse().unwrap();
    eprintln!("settled batch size: {settled}");
    assert!((1..=50).contains(&settled), "a size that fits half the timeout at 10 ms a row: {settled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_too_slow_for_upstream_even_alone_is_parked_alone_and_the_rest_arrive() {
    let pair = Pair::new("split_park", Mode::Postgres).await;
    pair.init().await;
    slow_upstream_services(&pair, "NEW.name = 'glacial'", 3.0, "1s").await;
    pair.local
        .connect()
        .await
        .batch_execute(
            "INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 20) g;
             INSERT INTO services (name, price) VALUES ('glacial', 1);
             INSERT INTO services (name, price) SELECT 'late ' || g, g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    pair.once().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 40, "the rest arrive");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'glacial'").await, 0);
    let c = pair.local.journal().connect().await;
    let parked = c.query("SELECT data->>'name', error FROM _sync_pending WHERE parked_at IS NOT NULL AND NOT synced", &[]).await.unwrap();
    assert_eq!(parked.len(), 1, "only the one change is parked");
    let (name, error): (String, String) = (parked[0].get(0), parked[0].get(1));
    assert_eq!(name, "glacial");
    assert!(error.contains("too slow for upstream even alone") && error.contains("statement timeout"), "{error}");
    let status = String::from_utf8_lossy(&pair.ok(&["status"]).await.stdout).to_string();
    let line = status.lines().find(|l| l.starts_with("services ")).unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("too slow for upstream even alone"), "{line}");
    assert!(status.contains("journal: 0 pending, 1 parked"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_unsynced_tables_do_not_hold_the_slot_back() {
    let pair = Pair::new("idle_slot", Mode::Postgres).await;
    pair.init().await;
    let mut child = pair.spawn_run(&[]);
    let local = pair.local.connect().await;
    for i in 0..50 {
        local.execute("INSERT INTO audit_trail (what) VALUES ($1)", &[&format!("unrelated {i}")]).await.unwrap();
    }
    let target: String = local.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let slot = pair.slot.clone();
    wait_for("confirmed_flush_lsn past the unrelated writes", Duration::from_secs(60), || {
        let (local, target, slot) = (&local, target.clone(), slot.clone());
        async move {
            let ok: bool = local
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                    &[&target, &slot],
                )
                .await
                .unwrap()
                .get(0);
            ok.then_some(())
        }
    })
    .await;
    kill9(&mut child);
}

async fn a_newer_upstream_row_is_kept_and_an_older_one_replaced(mode: Mode) {
    let pair = Pair::new("lww_up", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local
        .batch_execute(
            "INSERT INTO branches (id, name, updated_at) VALUES
               ('00000000-0000-0000-0000-000000000001', 'local newer', '2026-01-02'),
               ('00000000-0000-0000-0000-000000000002', 'local older', '2026-01-01')",
        )
        .await
        .unwrap();
    up.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO branches (id, name, updated_at) VALUES
           ('00000000-0000-0000-0000-000000000001', 'upstream older', '2026-01-01'),
           ('00000000-0000-0000-0000-000000000002', 'upstream newer', '2026-01-02')",
    )
    .await
    .unwrap();
    pair.once().await;
    let names: Vec<String> = up.query("SELECT name FROM branches ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["local newer".to_string(), "upstream newer".to_string()]);
    // updated_at is preserved exactly despite the upstream trigger.
    let ts: String = up.query_one("SELECT updated_at::text FROM branches WHERE name = 'local newer'", &[]).await.unwrap().get(0);
    assert!(ts.starts_with("2026-01-02"), "{ts}");
}

async fn an_upstream_outage_grows_the_journal_and_drains_when_it_is_back(mode: Mode) {
    let upstream_cluster = Cluster::start(Default::default());
    let local = Cluster::shared().create_database("outage_l").await;
    let upstream = upstream_cluster.create_database("outage_u").await;
    let pair = Pair::on(local, upstream, mode).await;
    pair.init().await;
    let mut child = pair.spawn_run(&[]);
    let local = pair.local.connect().await;
    upstream_cluster.stop(support::StopMode::Fast);
    for i in 0..200 {
        local.execute("INSERT INTO services (name, price) VALUES ($1, 1)", &[&format!("offline {i}")]).await.unwrap();
    }
    wait_for("the journal holding the offline writes", Duration::from_secs(60), || async {
        (count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE NOT synced").await >= 200).then_some(())
    })
    .await;
    upstream_cluster.start_again();
    pair.wait_converged(Duration::from_secs(120)).await;
    kill9(&mut child);
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE NOT synced").await, 0);
}

async fn rows_that_predate_the_slot_are_uploaded_once_on_request(mode: Mode) {
    let pair = Pair::new("upload_existing", mode).await;
    let local = pair.local.connect().await;
    local
        .batch_execute(
            "INSERT INTO branches (name) VALUES ('pre-existing');
             INSERT INTO patients (branch_id, full_name, tags, metadata, notes)
             SELECT (SELECT id FROM branches), 'old ' || g, ARRAY['x'], '{\"a\": [1, 2.50]}', repeat('z', 3000) FROM generate_series(1, 300) g;",
        )
        .await
        .unwrap();
    pair.init_with(&["--upload-existing"]).await;
    pair.once().await;
    pair.assert_converged().await;
    let again = pair.ok(&["init", "--upload-existing"]).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("already uploaded"));
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending").await, 301);
}

all_modes!(
    ten_thousand_mixed_changes_reach_upstream_identically,
    each_row_change_is_journaled_exactly_once_across_crashes,
    sigkill_of_a_running_service_loses_nothing,
    an_update_that_leaves_a_toasted_column_unchanged_does_not_touch_it_upstream,
    a_column_added_mid_stream_is_carried_or_parked_by_name,
    a_newer_upstream_row_is_kept_and_an_older_one_replaced,
    an_upstream_outage_grows_the_journal_and_drains_when_it_is_back,
    rows_that_predate_the_slot_are_uploaded_once_on_request,
);

/// The pusher's progress is one cursor (`_sync_push.through_id`), not a
/// mark on every row: a row that stays queued (a transient rejection) holds
/// the cursor before it, the rows delivered after it are marked on their
/// own and never read again, a parked row lets the cursor pass, and the
/// `_sync_pending` view still answers the specification's `synced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_cursor_waits_for_a_queued_row_and_never_rereads_what_was_delivered() {
    use centrovision_sync::error::At;
    use centrovision_sync::journal::{Source, next_batch};
    use centrovision_sync::store::JournalStore;
    let pair = Pair::new("push_cursor", Mode::Postgres).await;
    pair.init().await;
    let j = pair.local.journal().connect().await;
    let before: i64 = j.query_one("SELECT coalesce(max(id), 0) FROM _sync_journal", &[]).await.unwrap().get(0);
    j.batch_execute(
        "INSERT INTO _sync_journal (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts)
         SELECT 'services', 'r' || g, 'INSERT', '{}', ('0/' || to_hex(1000 + g))::pg_lsn, 1, now()
         FROM generate_series(1, 6) g",
    )
    .await
    .unwrap();
    let js = JournalStore::new(&j, At::local("test journal"));
    let queue = |after: i64| {
        let j = &j;
        async move { next_batch(j, &Source::Queue, 100, after).await.unwrap().iter().map(|r| r.id - before).collect::<Vec<_>>() }
    };
    assert_eq!(queue(0).await, vec![1, 2, 3, 4, 5, 6], "the queue is every row after the cursor");
    let id = |n: i64| before + n;
    // Row 3 is rejected for a transient reason (stays queued), row 5 is parked, the rest delivered.
    js.record_failure(&[id(3)], "transient", false).await.unwrap();
    js.record_failure(&[id(5)], "data error", true).await.unwrap();
    let through = js.settle(&[id(1), id(2), id(4), id(6)], id(6)).await.unwrap();
    assert_eq!(through, id(2), "the cursor stops just before the row that stays queued");
    assert_eq!(queue(0).await, vec![3], "delivered and parked rows are not read again");
    let marked: i64 = j.query_one("SELECT count(*) FROM _sync_journal WHERE synced", &[]).await.unwrap().get(0);
    assert_eq!(marked, 2, "only the rows delivered past the cursor (4 and 6) carry a mark of their own");
    let through = js.settle(&[id(3)], id(3)).await.unwrap();
    assert_eq!(through, id(3), "the retried row delivered, the cursor passes it");
    assert!(queue(0).await.is_empty(), "nothing left to send");
    assert_eq!(js.backlog().await.unwrap(), 0, "backlog");
    assert_eq!(js.parked().await.unwrap(), 1, "the parked row is still counted as parked");
    let (unsynced, without_time): (i64, i64) = {
        let r = j
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT synced), count(*) FILTER (WHERE synced AND synced_at IS NULL) FROM _sync_pending",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(unsynced, 1, "the view says synced = false only for the parked row");
    assert_eq!(without_time, 0, "every delivered row shows when it was delivered");
    // Retention counts from when the cursor passed a row; rows beyond the
    // cursor (4 and 6, marked on their own) wait for it, the parked row stays.
    let pruned = js.prune_journal(0, 1000, "no_such_slot").await.unwrap();
    assert_eq!(pruned, 3, "rows 1-3, which the cursor passed, are pruned");
    let left: Vec<i64> =
        j.query("SELECT id FROM _sync_journal ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get::<_, i64>(0) - before).collect();
    assert_eq!(left, vec![4, 5, 6], "what the cursor has not passed, and the parked row, stay");
    // One transaction larger than the batch (250 rows, limit 100) comes whole,
    // in order, and its tail read stops at its own last row: the next
    // transaction's 3 rows are left for the next batch.
    js.settle(&[id(4), id(6)], id(6)).await.unwrap();
    j.batch_execute(
        "INSERT INTO _sync_journal (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts)
         SELECT 'services', 'big' || g, 'INSERT', '{}', '0/9000'::pg_lsn, g, now() FROM generate_series(1, 250) g;
         INSERT INTO _sync_journal (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts)
         SELECT 'services', 'next' || g, 'INSERT', '{}', '0/9100'::pg_lsn, g, now() FROM generate_series(1, 3) g",
    )
    .await
    .unwrap();
    let big = next_batch(&j, &Source::Queue, 100, 0).await.unwrap();
    let names: Vec<&str> = big.iter().map(|r| r.record_id.as_deref().unwrap_or("")).collect();
    assert_eq!(big.len(), 250, "the whole large transaction, nothing of the next: {:?}", &names[240.min(names.len())..]);
    assert!(big.windows(2).all(|w| w[0].id < w[1].id), "journal order");
    assert_eq!((names[0], names[249]), ("big1", "big250"), "first and last rows of the transaction");
}

/// Postgres mode: the upstream session is `replica` from the first batch on,
/// so batches stop re-planning (see `upstream::postgres`), and statements
/// that install objects reset it first, so the project's event triggers
/// still fire for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_session_is_replica_only_for_batches_and_installs_run_as_the_default() {
    use centrovision_sync::upstream::Upstream;
    let pair = Pair::new("session_role", Mode::Postgres).await;
    pair.init().await;
    pair.upstream
        .connect()
        .await
        .batch_execute(
            "CREATE TABLE ddl_seen (tag text);
             CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO ddl_seen VALUES (tg_tag); END$$;
             CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();",
        )
        .await
        .unwrap();
    let cfg = centrovision_sync::config::Config::load(pair.config_path()).expect("the pair's config loads");
    let up = centrovision_sync::upstream::postgres::PgUpstream::new(&cfg).expect("postgres upstream");
    let role = async || up.session_replication_role().await.expect("session_replication_role");
    assert_eq!(role().await, "origin", "a new session starts at the server's default");
    let outcome = up.apply("[]").await.expect("an empty batch");
    assert_eq!(outcome.applied.len() + outcome.kept.len() + outcome.rejected.len(), 0);
    assert_eq!(role().await, "replica", "after a batch the session stays replica");
    up.run_batch("CREATE TABLE made_by_an_install (x int)").await.expect("DDL");
    assert_eq!(role().await, "origin", "an install resets the session first");
    assert_eq!(
        count(&pair.upstream, "SELECT count(*) FROM ddl_seen WHERE tag = 'CREATE TABLE'").await,
        1,
        "the install's CREATE TABLE fired the project's event trigger"
    );
    up.apply("[]").await.expect("an empty batch");
    assert_eq!(role().await, "replica", "the next batch sets it again");
    let doctor = pair.exec(&["doctor"], &[]).await;
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(said.contains("ok    batches keep session_replication_role = replica for the session"), "{said}");
}

/// A role that may not set `session_replication_role` for its session (a
/// vanilla PostgreSQL role without the privilege) still pushes every change:
/// each batch sets it for its own transaction, as the function's owner may;
/// the log says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_role_refused_replica_for_its_session_still_pushes_every_change() {
    let mut pair = Pair::new("session_role_refused", Mode::Postgres).await;
    pair.init().await;
    let role = format!("cv_norep_{}_{}", std::process::id(), rand::random::<u32>());
    let schema = centrovision_sync::catalog::quote_ident(&pair.upstream_schema);
    pair.upstream
        .connect()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'norep-pw';
             GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role};"
        ))
        .await
        .unwrap();
    pair.upstream = pair.upstream.with_credentials(&role, "norep-pw");
    pair.write_config();
    let refused = pair.upstream.connect().await.batch_execute("SET session_replication_role = replica").await.expect_err("not allowed");
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused:?}");

    pair.local
        .connect()
        .await
        .batch_execute("INSERT INTO services (name, price) SELECT 'svc ' || g, g FROM generate_series(1, 20) g")
        .await
        .unwrap();
    let out = pair.once().await;
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 20, "every row arrives");
    pair.assert_converged().await;
    let said = log.matches("may not set session_replication_role for its session").count();
    assert_eq!(said, 1, "said once:\n{log}");
    // `doctor` says so too, with the grant that would allow it; not a problem.
    let doctor = pair.exec(&["doctor"], &[]).await;
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(said.contains("note  the upstream role may not set session_replication_role for its session"), "{said}");
    let grant = format!("GRANT SET ON PARAMETER session_replication_role TO {};", centrovision_sync::catalog::quote_ident(&role));
    assert!(said.contains(&grant), "{said}");
    assert_eq!(doctor.status.code(), Some(0), "a note is not a problem:\n{said}");
}

/// `_sync_log` gets one up row per table for all the batches that drained
/// within one `interval_seconds` (their rows summed), written when the
/// interval is over or the service stops, not one row per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_up_path_logs_one_row_per_table_per_interval_however_many_batches() {
    let pair = Pair::new("log_per_interval", Mode::Postgres).await;
    pair.init().await;
    let config = pair.config_path();
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("interval_seconds = 1\n"), "{text}");
    std::fs::write(config, text.replace("interval_seconds = 1\n", "interval_seconds = 3600\n")).unwrap();
    let ups = async || {
        let c = pair.local.connect().await;
        let rows = c
            .query("SELECT table_name, records_affected FROM _sync_log WHERE direction = 'UP' AND status = 'SUCCESS' ORDER BY id", &[])
            .await
            .unwrap();
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1))).collect::<Vec<_>>()
    };
    let mut child = pair.spawn_run(&[]);
    let local = pair.local.connect().await;
    for i in 1..=3 {
        local.execute("INSERT INTO services (name, price) VALUES ($1, 1)", &[&format!("batch {i}")]).await.unwrap();
        wait_for(&format!("{i} rows upstream"), Duration::from_secs(60), || async {
            (count(&pair.upstream, "SELECT count(*) FROM services").await == i).then_some(())
        })
        .await;
    }
    assert_eq!(ups().await, vec![], "nothing logged before the interval is over");
    support::sync::terminate(&mut child);
    assert_eq!(ups().await, vec![("services".to_string(), 3)], "one row for the three batches, written on stopping");
}
