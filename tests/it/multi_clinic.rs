//! Many clinics, one Supabase: two clinic databases and one upstream, each
//! clinic with its own service (config, slot, origin, `clinic_id`).
//!
//! One test per everyday situation of the multi-clinic issue, each checking
//! a line of the conflict rule (README, "The conflict rule"): changes of one
//! writer apply in its commit order; between writers the later stamp wins,
//! ties broken by writer id; a delete is a version; a stamp too far in the
//! future counts as the server's now. Clinic edits that must carry a chosen
//! stamp run with `session_replication_role = replica` so the sample
//! schema's `updated_at = now()` trigger leaves the stamp alone (capture
//! still sees them: only the replication origin hides a write).

use std::time::Duration;

use crate::support;
use support::sync::{Mode, Pair, count, terminate};
use support::{Cluster, ClusterOptions, TestDb};

/// Two clinics sharing one upstream.
struct Clinics {
    a: Pair,
    b: Pair,
}

impl Clinics {
    async fn new(hint: &str, mode: Mode) -> Clinics {
        let mut a = Pair::new(&format!("{hint}_a"), mode).await;
        let mut b = Pair::joining(&format!("{hint}_b"), &a).await;
        a.sync_extra.push_str("clinic_id = \"clinic-a\"\n");
        b.sync_extra.push_str("clinic_id = \"clinic-b\"\n");
        a.write_config();
        b.write_config();
        a.init().await;
        b.init().await;
        Clinics { a, b }
    }

    /// A, then B, then A again: afterwards each has seen the other's writes.
    async fn sync_all(&self) {
        self.a.once().await;
        self.b.once().await;
        self.a.once().await;
    }

    /// All three databases hold the same rows in every synced table.
    async fn assert_identical(&self) {
        self.a.assert_converged().await;
        self.b.assert_converged().await;
    }
}

async fn exec(db: &TestDb, sql: &str) {
    db.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn text(db: &TestDb, sql: &str) -> Option<String> {
    db.connect().await.query_opt(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).map(|r| r.get(0))
}

const R: &str = "00000000-0000-0000-0000-0000000000e1";
/// A change journaled under the old version but not yet sent (upgrade test).
const R2: &str = "00000000-0000-0000-0000-0000000000e2";

fn name_of(id: &str) -> String {
    format!("SELECT name FROM services WHERE id = '{id}'")
}

/// Writes `name` to service R at `db` with an explicit conflict stamp.
fn stamped_edit(name: &str, stamp: &str) -> String {
    format!(
        "BEGIN; SET LOCAL session_replication_role = replica;
         UPDATE services SET name = '{name}', updated_at = {stamp} WHERE id = '{R}'; COMMIT"
    )
}

async fn seed(c: &Clinics) {
    exec(&c.a.local, &format!("INSERT INTO services (id, name) VALUES ('{R}', 'v1')")).await;
    c.sync_all().await;
    assert_eq!(text(&c.b.local, &name_of(R)).await.as_deref(), Some("v1"), "seed reached clinic B");
}

/// Situation 1: B's edit, made while offline and stamped before A's last
/// download, still reaches A (the feed is in commit order, not stamp order).
async fn an_edit_made_offline_reaches_the_other_clinic_after_its_cursor_moved_on(mode: Mode) {
    let c = Clinics::new("late", mode).await;
    seed(&c).await;
    exec(&c.b.local, &format!("UPDATE services SET name = 'edited at B offline' WHERE id = '{R}'")).await;
    // Meanwhile the cloud app writes and A downloads it: A's cursor moves past B's stamp.
    exec(&c.a.upstream, "INSERT INTO services (name) VALUES ('cloud row')").await;
    c.a.once().await;
    // B reconnects; A syncs again.
    c.b.once().await;
    c.a.once().await;
    assert_eq!(text(&c.a.local, &name_of(R)).await.as_deref(), Some("edited at B offline"));
    // A's next edit wins everywhere.
    exec(&c.a.local, &format!("UPDATE services SET name = 'A later' WHERE id = '{R}'")).await;
    c.sync_all().await;
    c.b.once().await;
    assert_eq!(text(&c.b.local, &name_of(R)).await.as_deref(), Some("A later"));
    c.assert_identical().await;
}

/// Situation 2: A hard-deletes a row B edited earlier while offline: B's
/// older edit does not bring it back, and B learns of the delete.
async fn an_older_offline_edit_does_not_resurrect_a_row_deleted_at_another_clinic(mode: Mode) {
    let c = Clinics::new("resurrect", mode).await;
    seed(&c).await;
    exec(&c.b.local, &stamped_edit("B offline edit", "now() - interval '10 minutes'")).await;
    exec(&c.a.local, &format!("DELETE FROM services WHERE id = '{R}'")).await;
    c.a.once().await;
    c.b.once().await;
    c.a.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(count(db, &format!("SELECT count(*) FROM services WHERE id = '{R}'")).await, 0, "row gone at {who}");
    }
    // The losing edit is in the conflict log, with the rule that decided.
    let log = c.b.ok(&["conflicts", "--json"]).await;
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("B offline edit") && log.contains("clinic-a") && log.contains("later updated_at wins"), "{log}");
    // `status` names the clinic and counts the conflicts decided upstream.
    let logged = serde_json::from_str::<serde_json::Value>(&log).expect("conflicts --json").as_array().map_or(0, Vec::len);
    let st = c.b.ok(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status --json");
    assert_eq!(st["clinic_id"], "clinic-b", "{st}");
    assert_eq!(st["conflicts"], serde_json::json!(logged), "{st}");
    let text = c.b.ok(&["status"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("clinic clinic-b") && text.contains(&format!("conflicts decided upstream: {logged}")), "{text}");
    c.assert_identical().await;
}

/// A hard delete at one clinic reaches the other.
async fn a_hard_delete_at_one_clinic_reaches_the_other(mode: Mode) {
    let c = Clinics::new("delete", mode).await;
    seed(&c).await;
    exec(&c.a.local, &format!("DELETE FROM services WHERE id = '{R}'")).await;
    c.a.once().await;
    c.b.once().await;
    assert_eq!(count(&c.b.local, "SELECT count(*) FROM services").await, 0);
    c.assert_identical().await;
}

/// Situation 3: two overlapping transactions at one clinic update one row;
/// the one that commits last started first (older `now()`). Its write is
/// the one that stays, on every side.
async fn of_two_overlapping_transactions_at_one_clinic_the_last_committed_stays_everywhere(mode: Mode) {
    let c = Clinics::new("overlap", mode).await;
    seed(&c).await;
    let early = c.a.local.connect().await;
    early.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT now()").await.unwrap();
    let early_now: String = early.query_one("SELECT now()::text", &[]).await.unwrap().get(0);
    exec(&c.a.local, &format!("UPDATE services SET name = 'first committed' WHERE id = '{R}'")).await;
    c.a.once().await; // pushed before the other transaction commits
    early.batch_execute(&format!("UPDATE services SET name = 'last committed' WHERE id = '{R}'; COMMIT")).await.unwrap();
    let stamp = text(&c.a.local, &format!("SELECT updated_at::text FROM services WHERE id = '{R}'")).await.unwrap();
    assert_eq!(stamp, early_now, "the last committed write carries the older stamp");
    c.sync_all().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(text(db, &name_of(R)).await.as_deref(), Some("last committed"), "at {who}");
    }
    c.assert_identical().await;
}

/// Situation 4: a clinic's clock was ahead and is pulled back; its next edit
/// carries an older stamp than its previous one and still wins (same writer:
/// commit order).
async fn an_edit_after_the_clock_was_pulled_back_still_replaces_the_same_clinics_earlier_edit(mode: Mode) {
    let c = Clinics::new("clock", mode).await;
    seed(&c).await;
    exec(&c.a.local, &stamped_edit("fast clock", "now() + interval '3 minutes'")).await;
    c.a.once().await;
    exec(&c.a.local, &stamped_edit("after NTP", "now()")).await;
    c.sync_all().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(text(db, &name_of(R)).await.as_deref(), Some("after NTP"), "at {who}");
    }
    c.assert_identical().await;
}

/// A cloud-app edit against an offline clinic edit of the same row: the
/// later stamp wins, in both orders of arrival.
async fn a_cloud_edit_and_an_offline_clinic_edit_end_as_the_later_stamp_in_both_orders(mode: Mode) {
    let c = Clinics::new("cloud", mode).await;
    seed(&c).await;
    // Clinic edit older than the cloud's: the cloud's stays.
    exec(&c.b.local, &stamped_edit("clinic older", "now() - interval '5 minutes'")).await;
    exec(&c.a.upstream, &format!("UPDATE services SET name = 'cloud newer' WHERE id = '{R}'")).await;
    c.sync_all().await;
    c.b.once().await;
    assert_eq!(text(&c.b.local, &name_of(R)).await.as_deref(), Some("cloud newer"));
    c.assert_identical().await;
    // Cloud edit older than the clinic's (the cloud writes first this time).
    exec(
        &c.a.upstream,
        &format!(
            "BEGIN; SET LOCAL session_replication_role = origin;
         UPDATE services SET name = 'cloud older', updated_at = now() - interval '5 minutes' WHERE id = '{R}'; COMMIT"
        ),
    )
    .await;
    // (the sample schema's trigger stamps now(): disable it for this row's stamp)
    exec(&c.b.local, &stamped_edit("clinic newer", "now()")).await;
    c.sync_all().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(text(db, &name_of(R)).await.as_deref(), Some("clinic newer"), "at {who}");
    }
}

/// Equal stamps: the higher writer id wins, whichever clinic syncs first.
async fn equal_stamps_are_broken_by_writer_id_whichever_clinic_syncs_first(mode: Mode) {
    for a_first in [true, false] {
        let c = Clinics::new(if a_first { "tie_ab" } else { "tie_ba" }, mode).await;
        seed(&c).await;
        // One stamp for both edits, after the seed's and within the allowed clock skew.
        let stamp = text(&c.a.local, "SELECT quote_literal((now() + interval '1 minute')::text)").await.unwrap();
        exec(&c.a.local, &stamped_edit("from A", &format!("{stamp}::timestamptz"))).await;
        exec(&c.b.local, &stamped_edit("from B", &format!("{stamp}::timestamptz"))).await;
        if a_first {
            c.a.once().await;
            c.b.once().await;
        } else {
            c.b.once().await;
            c.a.once().await;
        }
        c.sync_all().await;
        c.b.once().await;
        for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
            assert_eq!(text(db, &name_of(R)).await.as_deref(), Some("from B"), "clinic-b > clinic-a, at {who} (A first: {a_first})");
        }
    }
}

/// A stamp two hours in the future counts as the server's now: a later
/// edit elsewhere still wins.
async fn a_stamp_two_hours_in_the_future_is_clamped_to_the_servers_clock(mode: Mode) {
    let c = Clinics::new("future", mode).await;
    seed(&c).await;
    exec(&c.a.local, &stamped_edit("fast clock", "now() + interval '2 hours'")).await;
    c.a.once().await;
    let stamp_ok = count(
        &c.a.upstream,
        &format!("SELECT count(*) FROM centrovision_sync.row_version WHERE pk = '{R}' AND stamp < now() + interval '1 minute'"),
    )
    .await;
    assert_eq!(stamp_ok, 1, "the recorded conflict stamp is the server's now, not two hours ahead");
    exec(&c.b.local, &format!("UPDATE services SET name = 'B a minute later' WHERE id = '{R}'")).await;
    c.sync_all().await;
    c.b.once().await;
    assert_eq!(text(&c.a.local, &name_of(R)).await.as_deref(), Some("B a minute later"));
    c.assert_identical().await;
}

/// A source transaction larger than one batch that changes the same row
/// again and again ends with its last change everywhere.
async fn a_transaction_larger_than_a_batch_ends_with_its_last_change_everywhere(mode: Mode) {
    let c = Clinics::new("bigtxn", mode).await;
    seed(&c).await;
    // batch_size is 500 in the harness: 2,400 updates of one row in one transaction,
    // each with an older explicit stamp than the one before.
    exec(
        &c.a.local,
        &format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
         DO $$ BEGIN FOR g IN 1..2400 LOOP
           UPDATE services SET name = 'step ' || g, updated_at = now() - g * interval '1 second' WHERE id = '{R}';
         END LOOP; END $$; COMMIT"
        ),
    )
    .await;
    c.sync_all().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(text(db, &name_of(R)).await.as_deref(), Some("step 2400"), "at {who}");
    }
}

/// A clinic never downloads its own writes (Supabase egress).
async fn a_clinic_downloads_none_of_the_rows_it_pushed(mode: Mode) {
    let c = Clinics::new("egress", mode).await;
    exec(&c.a.local, "INSERT INTO services (name) SELECT 'svc ' || g FROM generate_series(1, 1200) g").await;
    c.a.once().await;
    c.a.once().await;
    assert_eq!(count(&c.a.upstream, "SELECT count(*) FROM services").await, 1200);
    assert_eq!(
        count(&c.a.local, "SELECT coalesce(sum(records_synced_down), 0)::bigint FROM _sync_metadata").await,
        0,
        "clinic A read none of its own rows back"
    );
    c.b.once().await;
    assert_eq!(count(&c.b.local, "SELECT coalesce(sum(records_synced_down), 0)::bigint FROM _sync_metadata").await, 1200);
}

/// `resync` after clinic A's slot was lost: a row A had downloaded and then
/// deleted while the slot was gone is deleted everywhere, and a row clinic B
/// created that A never downloaded is brought down to A, never deleted
/// upstream as "deleted locally".
async fn resync_never_deletes_a_row_another_clinic_created_that_this_one_never_had(mode: Mode) {
    let c = Clinics::new("resync_mc", mode).await;
    const HAD: &str = "00000000-0000-0000-0000-0000000000a1";
    const NEW: &str = "00000000-0000-0000-0000-0000000000a2";
    exec(&c.b.local, &format!("INSERT INTO services (id, name) VALUES ('{HAD}', 'B row A downloaded')")).await;
    c.b.once().await;
    c.a.once().await;
    assert_eq!(count(&c.a.local, &format!("SELECT count(*) FROM services WHERE id = '{HAD}'")).await, 1, "A downloaded B's row");
    exec(&c.b.local, &format!("INSERT INTO services (id, name) VALUES ('{NEW}', 'B row A never had')")).await;
    c.b.once().await;
    // A's slot is lost; A deletes the row it had meanwhile (no capture).
    exec(&c.a.local, &format!("SELECT pg_drop_replication_slot('{}')", c.a.slot)).await;
    exec(&c.a.local, &format!("DELETE FROM services WHERE id = '{HAD}'")).await;
    let out = c.a.ok(&["resync"]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    for (who, db) in [("A", &c.a.local), ("upstream", &c.a.upstream)] {
        assert_eq!(count(db, &format!("SELECT count(*) FROM services WHERE id = '{NEW}'")).await, 1, "B's new row at {who}:\n{said}");
        assert_eq!(count(db, &format!("SELECT count(*) FROM services WHERE id = '{HAD}'")).await, 0, "A's delete at {who}:\n{said}");
    }
    c.b.once().await;
    assert_eq!(count(&c.b.local, &format!("SELECT count(*) FROM services WHERE id = '{HAD}'")).await, 0, "A's delete reached B");
    c.assert_identical().await;
}

/// Situation 5: the clinic database restored into a new cluster (pg_dump /
/// pg_restore: a new system identifier, LSNs far below the old ones),
/// without its journal database. The service refuses to run and says what
/// happened, and `doctor` names it; after `init` (a new journal database, in
/// a later capture epoch than the clinic wrote in, which the clinic's own
/// database remembers) every new change is captured and wins upstream,
/// including edits of rows synced before, whose new LSNs are lower than
/// before.
async fn a_database_restored_into_a_new_cluster_captures_every_change_after_init(mode: Mode) {
    let mut p = Pair::new("restored", mode).await;
    p.init().await;
    exec(&p.local, &format!("INSERT INTO services (id, name) VALUES ('{R}', 'before the move')")).await;
    exec(&p.local, "INSERT INTO services (name) SELECT 'old ' || g FROM generate_series(1, 20) g").await;
    p.once().await;
    let dump = p.dir.path().join("clinic.dump");
    let dumped = Cluster::shared().tool("pg_dump").args(["-Fc", "-d", &p.local.name, "-f"]).arg(&dump).output().expect("pg_dump");
    assert!(dumped.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dumped.stderr));
    let server = Cluster::start(ClusterOptions::default());
    // As a DBA moves a database: the cluster's roles first (the dump's grants
    // name them), then the database.
    let roles = p.dir.path().join("roles.sql");
    let dumped = Cluster::shared().tool("pg_dumpall").args(["--roles-only", "-f"]).arg(&roles).output().expect("pg_dumpall");
    assert!(dumped.status.success(), "pg_dumpall: {}", String::from_utf8_lossy(&dumped.stderr));
    // The bootstrap superuser is the new cluster's own (its password stays).
    let dumped_roles = std::fs::read_to_string(&roles).expect("roles dump");
    let others: String = dumped_roles.lines().filter(|l| !l.contains("ROLE postgres")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&roles, others).expect("roles dump");
    let made = server.tool("psql").args(["-q", "-d", "postgres", "-f"]).arg(&roles).output().expect("psql");
    assert!(made.status.success(), "roles: {}", String::from_utf8_lossy(&made.stderr));
    let restored = server.create_database("restored_new").await;
    let loaded = server.tool("pg_restore").args(["--no-owner", "-d", &restored.name]).arg(&dump).output().expect("pg_restore");
    assert!(loaded.status.success(), "pg_restore: {}", String::from_utf8_lossy(&loaded.stderr));
    p.local = restored;
    p.write_config();

    // Only the clinic's database moved: its journal database stayed behind.
    let refused = p.exec(&["once"], &[]).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("does not exist on this server") && err.contains("restored or moved here without"), "{err}");
    let doctor = p.exec(&["doctor"], &[]).await;
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(said.contains("restored or moved here without") && said.contains("centrovision-sync init"), "{said}");

    p.init().await;
    // A later epoch than any the clinic wrote in (its database remembers it).
    let epoch = count(&p.local.journal(), "SELECT max(epoch)::int8 FROM _sync_epoch").await;
    assert!(epoch >= 2, "the new journal starts capture epoch {epoch}, not after the clinic's earlier one");
    exec(&p.local, &format!("UPDATE services SET name = 'after the move' WHERE id = '{R}'")).await;
    exec(&p.local, "INSERT INTO services (name) SELECT 'new ' || g FROM generate_series(1, 20) g").await;
    p.once().await;
    assert_eq!(text(&p.upstream, &name_of(R)).await.as_deref(), Some("after the move"));
    assert_eq!(count(&p.upstream, "SELECT count(*) FROM services WHERE name LIKE 'new %'").await, 20);
    p.assert_converged().await;
}

/// A new capture epoch (here: the slot recreated, as `resync` does) starts
/// after every journal id ever issued, even when the journal was pruned
/// empty since: its changes carry the new epoch upstream. (Were the epoch
/// placed at "the highest id still in the journal + 1", it would sort before
/// the previous epoch and new changes would carry that older epoch; after a
/// restore into another cluster, whose LSNs are lower, upstream would take
/// them for re-sends it already had and keep none of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_capture_epoch_starts_after_every_journal_id_even_when_the_journal_was_pruned_empty() {
    let p = Pair::new("epoch_pruned", Mode::Postgres).await;
    p.init().await;
    let progress = "SELECT max(epoch)::int8 FROM centrovision_sync.writer_progress";
    let max_epoch = "SELECT max(epoch)::int8 FROM _sync_epoch";
    for round in 1..=2 {
        exec(&p.local, &format!("INSERT INTO services (name) SELECT 'round {round} ' || g FROM generate_series(1, 20) g")).await;
        p.once().await;
        assert_eq!(
            count(&p.upstream, progress).await,
            count(&p.local.journal(), max_epoch).await,
            "round {round}: pushed in the epoch in force"
        );
        if round == 2 {
            // Everything delivered is pruned (as retention does), the second epoch's rows too.
            exec(&p.local.journal(), "DELETE FROM _sync_journal").await;
        }
        // The slot is lost and recreated.
        exec(&p.local, &format!("SELECT pg_drop_replication_slot('{}')", p.slot)).await;
        p.init().await;
    }
    let epoch = count(&p.local.journal(), max_epoch).await;
    assert_eq!(epoch, 3, "two recreated slots, two new epochs");
    exec(&p.local, "INSERT INTO services (name) VALUES ('after the second new slot')").await;
    p.once().await;
    assert_eq!(count(&p.upstream, progress).await, epoch, "the change went upstream in the newest epoch");
    let order = text(&p.local.journal(), "SELECT string_agg(epoch::text, ',' ORDER BY first_journal_id, epoch) FROM _sync_epoch").await;
    assert_eq!(order.as_deref(), Some("1,2,3"), "epochs in journal order are in epoch order");
    p.assert_converged().await;
}

/// A table added to `[sync] tables` while `run` is going: after `init` and a
/// restart, its rows from before are uploaded, the change made between
/// `init` and the restart is not skipped, and its upstream rows come down.
async fn a_table_added_while_running_is_captured_and_its_existing_rows_uploaded(mode: Mode) {
    let mut p = Pair::new("added", mode).await;
    p.tables = vec!["branches".into()];
    p.write_config();
    p.init().await;
    exec(&p.local, "INSERT INTO services (name) SELECT 'before ' || g FROM generate_series(1, 300) g").await;
    exec(&p.upstream, "INSERT INTO services (name) VALUES ('from the cloud')").await;
    let mut running = p.spawn_run(&[]);
    // The old process streams before the table is added, so it sees the change below.
    let slot = p.slot.clone();
    let local = p.local.connect().await;
    support::wait_for("the running service streaming from its slot", Duration::from_secs(60), || async {
        let active: bool = local
            .query_one("SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)", &[&slot])
            .await
            .unwrap()
            .get(0);
        active.then_some(())
    })
    .await;
    p.tables.push("services".into());
    p.write_config();
    p.init().await;
    exec(&p.local, "INSERT INTO services (name) VALUES ('between init and restart')").await;
    let stopped = terminate(&mut running.0);
    assert!(stopped.success(), "run exited with {stopped}:\n{}", support::sync::tail(&p.run_log(), 30));
    let _running = p.spawn_run(&[]);
    p.wait_converged(Duration::from_secs(60)).await;
    assert_eq!(count(&p.upstream, "SELECT count(*) FROM services").await, 302);
    assert_eq!(count(&p.local, "SELECT count(*) FROM services WHERE name = 'from the cloud'").await, 1);
}

/// Upgrade in place: an installation of the previous version (contract 2:
/// no per-row state upstream, a timestamp watermark locally, the journal in
/// the clinic's own database) moves to this one with `init` + `init
/// --upstream` (or the printed SQL). Until then the new binary refuses to
/// sync and says how to upgrade; afterwards the journal lives in the journal
/// database with every row it had (the change journaled but not yet sent
/// under the old version arrives upstream, once), the change made under the
/// old version is pushed, the cloud edit made after the old watermark comes
/// down, and none of the rows both sides already had are downloaded again.
async fn an_installation_of_the_previous_version_upgrades_in_place_without_downloading_everything_again(mode: Mode) {
    let p = Pair::new("upgrade", mode).await;
    p.init().await;
    let rows = "SET session_replication_role = replica;
        INSERT INTO services (id, name, price, created_at, updated_at)
        SELECT md5(g::text)::uuid, 'service ' || g, g, '2026-01-01 08:00+00', '2026-01-02 08:00+00'
        FROM generate_series(1, 200) g;";
    exec(&p.local, rows).await;
    exec(&p.upstream, rows).await;
    // What the previous version left: no sync state upstream, contract 2,
    // and locally neither cluster identity, epochs, feed cursors nor the
    // hourly history, only the watermark of its timestamp poller.
    exec(
        &p.upstream,
        "DROP SCHEMA centrovision_sync CASCADE;
         CREATE OR REPLACE FUNCTION public.centrovision_sync_version() RETURNS integer LANGUAGE sql AS 'SELECT 2';",
    )
    .await;
    // The old version's journal, in the clinic's database, holding what the
    // journal database holds now plus one change journaled but not yet sent.
    let journal = p.local.journal().connect().await;
    let json = |sql: &'static str| {
        let journal = &journal;
        async move { journal.query_one(sql, &[]).await.unwrap().get::<_, String>(0) }
    };
    let capture = json(
        "SELECT jsonb_agg(jsonb_build_object('slot_name', slot_name, 'journaled_lsn', journaled_lsn, 'confirmed_end_lsn', confirmed_end_lsn, 'updated_at', updated_at))::text
         FROM _sync_capture",
    )
    .await;
    let pending = json("SELECT coalesce(jsonb_agg(t), '[]')::text FROM _sync_pending t").await;
    drop(journal);
    let l = p.local.connect().await;
    l.batch_execute(
        "CREATE TABLE _sync_pending (id BIGSERIAL PRIMARY KEY, table_name VARCHAR(100) NOT NULL, record_id TEXT,
            operation VARCHAR(10) NOT NULL, data JSONB, created_at TIMESTAMPTZ DEFAULT NOW(), synced BOOLEAN DEFAULT FALSE,
            synced_at TIMESTAMPTZ, error TEXT, retry_count INTEGER DEFAULT 0, commit_lsn PG_LSN, ordinal INTEGER,
            commit_ts TIMESTAMPTZ, xid BIGINT, unchanged_columns TEXT[], parked_at TIMESTAMPTZ);
         CREATE TABLE _sync_capture (slot_name TEXT PRIMARY KEY, journaled_lsn PG_LSN NOT NULL DEFAULT '0/0',
            confirmed_end_lsn PG_LSN NOT NULL DEFAULT '0/0', updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());",
    )
    .await
    .unwrap();
    l.execute("INSERT INTO _sync_capture SELECT * FROM jsonb_populate_recordset(NULL::_sync_capture, $1::text::jsonb)", &[&capture])
        .await
        .unwrap();
    l.execute("INSERT INTO _sync_pending SELECT * FROM jsonb_populate_recordset(NULL::_sync_pending, $1::text::jsonb)", &[&pending])
        .await
        .unwrap();
    // Under the origin, so capture skips it: the old version had journaled it.
    l.batch_execute(&format!("SELECT pg_replication_origin_session_setup('o_{}')", p.local.name)).await.unwrap();
    l.batch_execute(&format!(
        "INSERT INTO services (id, name, created_at, updated_at) VALUES ('{R2}', 'journaled, not sent, under the old version', now(), now())"
    ))
    .await
    .unwrap();
    l.batch_execute("SELECT pg_replication_origin_session_reset()").await.unwrap();
    l.batch_execute(&format!(
        "SELECT setval('_sync_pending_id_seq', coalesce((SELECT max(id) FROM _sync_pending), 0) + 1, false);
         INSERT INTO _sync_pending (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts, xid)
         SELECT 'services', id::text, 'INSERT', (SELECT jsonb_object_agg(k, v) FROM jsonb_each_text(to_jsonb(s)) e(k, v)),
                pg_current_wal_lsn(), 1, updated_at, 1
         FROM services s WHERE id = '{R2}';"
    ))
    .await
    .unwrap();
    // The old version had issued ids beyond the rows it still holds (pruned,
    // or in transactions that rolled back): new ids go on after them.
    l.batch_execute("SELECT setval('_sync_pending_id_seq', 5000)").await.unwrap();
    l.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", centrovision_sync::catalog::quote_ident(&p.local.journal().name)))
        .await
        .unwrap();
    let moved = count(&p.local, "SELECT count(*) FROM _sync_pending").await;
    exec(
        &p.local,
        "DROP TABLE _sync_history, _sync_backlog_history;
         ALTER TABLE _sync_metadata DROP COLUMN feed_prev, DROP COLUMN feed_target, DROP COLUMN feed_after;
         UPDATE _sync_metadata SET last_sync_from_supabase = now(), records_synced_down = 0;",
    )
    .await;
    exec(&p.local, &format!("INSERT INTO services (id, name) VALUES ('{R}', 'made under the old version')")).await;
    exec(&p.upstream, "UPDATE services SET name = 'cloud edit after the watermark' WHERE id = md5('7')::uuid").await;

    let refused = p.exec(&["once"], &[]).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("earlier centrovision-sync version") && err.contains("upgrade in place"), "{err}");

    p.init().await;
    assert_eq!(count(&p.local, "SELECT count(*) FROM pg_tables WHERE tablename IN ('_sync_pending', '_sync_capture')").await, 0);
    assert_eq!(count(&p.local.journal(), "SELECT count(*) FROM _sync_pending").await, moved, "every journal row moved");
    p.once().await;
    assert_eq!(text(&p.upstream, &name_of(R)).await.as_deref(), Some("made under the old version"));
    assert!(
        count(&p.local.journal(), &format!("SELECT min(id) FROM _sync_journal WHERE record_id = '{R}'")).await > 5000,
        "the first change journaled after the move has an id after every id the old journal issued"
    );
    assert_eq!(text(&p.upstream, &name_of(R2)).await.as_deref(), Some("journaled, not sent, under the old version"));
    let r2 = format!(
        "SELECT coalesce(string_agg(format('%s %s %s %s', id, operation, commit_lsn, xid), '; '), '') FROM _sync_pending WHERE record_id = '{R2}'"
    );
    let journaled = text(&p.local.journal(), &r2).await.unwrap_or_default();
    assert_eq!(
        count(&p.local.journal(), &format!("SELECT count(*) FROM _sync_pending WHERE record_id = '{R2}' AND synced")).await,
        1,
        "{journaled}"
    );
    assert_eq!(count(&p.local, "SELECT count(*) FROM services WHERE name = 'cloud edit after the watermark'").await, 1);
    assert_eq!(
        count(&p.local, "SELECT coalesce(sum(records_synced_down), 0)::bigint FROM _sync_metadata").await,
        1,
        "only the row changed after the old watermark came down"
    );
    p.assert_converged().await;
}

/// A TRUNCATE is a tombstone for every row it removed: one at clinic A
/// empties the table upstream and at clinic B; one in the cloud app
/// empties it at both clinics; a row written after the truncate stays.
async fn a_truncate_at_a_clinic_or_in_the_cloud_reaches_every_side(mode: Mode) {
    let c = Clinics::new("truncate", mode).await;
    exec(&c.a.local, "INSERT INTO invoice_items (quantity) SELECT g FROM generate_series(1, 30) g").await;
    c.sync_all().await;
    c.b.once().await;
    assert_eq!(count(&c.b.local, "SELECT count(*) FROM invoice_items").await, 30, "seeded at B");
    exec(&c.a.local, "TRUNCATE invoice_items").await;
    exec(&c.a.local, "INSERT INTO invoice_items (quantity) VALUES (1000)").await;
    c.a.once().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(count(db, "SELECT count(*) FROM invoice_items").await, 1, "after A's truncate, at {who}");
    }
    exec(&c.a.upstream, "TRUNCATE invoice_items").await;
    exec(&c.b.local, "INSERT INTO invoice_items (quantity) VALUES (2000)").await;
    c.sync_all().await;
    c.b.once().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(count(db, "SELECT count(*) FROM invoice_items").await, 1, "after the cloud's truncate, at {who}");
        assert_eq!(count(db, "SELECT count(*) FROM invoice_items WHERE quantity = 2000").await, 1, "B's later row at {who}");
    }
    c.assert_identical().await;
}

/// An edit of the version a clinic had downloaded is an edit, not a
/// conflict: the pusher sends the version each row was downloaded at (`b`,
/// `_sync_row_base`), and upstream logs an overwrite only when the clinic had
/// not seen the version it replaced.
async fn an_edit_of_a_version_the_clinic_downloaded_is_not_logged_as_a_conflict(mode: Mode) {
    let c = Clinics::new("edit_not_conflict", mode).await;
    seed(&c).await; // A wrote R, B downloaded it
    exec(&c.b.local, &format!("UPDATE services SET name = 'edited at B after download' WHERE id = '{R}'")).await;
    c.b.once().await;
    assert_eq!(text(&c.a.upstream, &name_of(R)).await.as_deref(), Some("edited at B after download"));
    let logged = count(&c.a.upstream, &format!("SELECT count(*) FROM centrovision_sync.conflict WHERE pk = '{R}'")).await;
    assert_eq!(logged, 0, "B's edit of the version it had downloaded was logged as a conflict");
    // A edits R without having downloaded B's edit: B's version is replaced unseen, a conflict.
    exec(&c.a.local, &format!("UPDATE services SET name = 'A without seeing B' WHERE id = '{R}'")).await;
    c.a.once().await;
    let logged = count(&c.a.upstream, &format!("SELECT count(*) FROM centrovision_sync.conflict WHERE pk = '{R}'")).await;
    assert_eq!(logged, 1, "A's edit replaced B's version, which A had not downloaded");
}

/// A local DELETE that commits while a down page bringing another clinic's
/// edit of the same row is being applied is not undone: the page locks the
/// row first (and waits for the open delete), then waits until capture has
/// journaled every commit before the lock, and leaves a row with a local
/// change upstream has not processed alone. The delete, stamped later than
/// the edit, then wins everywhere.
async fn a_local_delete_committing_while_a_down_page_applies_is_not_undone(mode: Mode) {
    let c = Clinics::new("delete_race", mode).await;
    seed(&c).await;
    exec(&c.b.local, &format!("UPDATE services SET name = 'edited at B' WHERE id = '{R}'")).await;
    c.b.once().await;
    // A receptionist at A deletes the row; the transaction is still open.
    let open = c.a.local.connect().await;
    open.batch_execute(&format!("BEGIN; DELETE FROM services WHERE id = '{R}'")).await.expect("delete at A");
    // A's down page brings B's edit and has to wait for that row's lock.
    let mut once = c.a.command(&["once"]);
    once.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = once.spawn().expect("spawn once");
    let waiter = c.a.local.connect().await;
    support::wait_for("A's down page to wait for the open delete's row lock", Duration::from_secs(60), || async {
        let n: i64 = waiter
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%FOR UPDATE%'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    open.batch_execute("COMMIT").await.expect("commit the delete at A");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("once");
    assert!(out.status.success(), "once at A: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        count(&c.a.local, &format!("SELECT count(*) FROM services WHERE id = '{R}'")).await,
        0,
        "the down page brought back the row A deleted while it was applying"
    );
    c.sync_all().await;
    for (who, db) in [("A", &c.a.local), ("B", &c.b.local), ("upstream", &c.a.upstream)] {
        assert_eq!(count(db, &format!("SELECT count(*) FROM services WHERE id = '{R}'")).await, 0, "row gone at {who}");
    }
    c.assert_identical().await;
}

crate::both_modes!(
    a_local_delete_committing_while_a_down_page_applies_is_not_undone,
    an_edit_of_a_version_the_clinic_downloaded_is_not_logged_as_a_conflict,
    a_truncate_at_a_clinic_or_in_the_cloud_reaches_every_side,
    an_installation_of_the_previous_version_upgrades_in_place_without_downloading_everything_again,
    resync_never_deletes_a_row_another_clinic_created_that_this_one_never_had,
    a_database_restored_into_a_new_cluster_captures_every_change_after_init,
    a_table_added_while_running_is_captured_and_its_existing_rows_uploaded,
    an_older_offline_edit_does_not_resurrect_a_row_deleted_at_another_clinic,
    of_two_overlapping_transactions_at_one_clinic_the_last_committed_stays_everywhere,
    an_edit_after_the_clock_was_pulled_back_still_replaces_the_same_clinics_earlier_edit,
    a_cloud_edit_and_an_offline_clinic_edit_end_as_the_later_stamp_in_both_orders,
    equal_stamps_are_broken_by_writer_id_whichever_clinic_syncs_first,
    a_stamp_two_hours_in_the_future_is_clamped_to_the_servers_clock,
    a_transaction_larger_than_a_batch_ends_with_its_last_change_everywhere,
);

// Also on a project with a non-`public` schema and a lowered max rows: two
// clinics' feeds, pushes and deletes all through the schema's profile and
// entry points. (The feed answers one JSON value, which max rows does not
// cut; were it ever set-returning, these would lose rows here.)
crate::all_modes!(
    an_edit_made_offline_reaches_the_other_clinic_after_its_cursor_moved_on,
    a_hard_delete_at_one_clinic_reaches_the_other,
    a_clinic_downloads_none_of_the_rows_it_pushed,
);
