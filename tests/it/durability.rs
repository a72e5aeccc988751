//! What the service's local writes rest on, whatever the server's defaults:
//! every session commits synchronously, the journal's own database survives
//! an immediate restart of the cluster mid-batch, and a table whose deletes
//! capture could not key (REPLICA IDENTITY NOTHING, or an index without the
//! primary key) is reported with the exact fix instead of stopping capture
//! at its first delete.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use support::sync::{Mode, Pair, count};
use support::{Cluster, ClusterOptions, StopMode, TestDb, wait_for};

/// The journal lives in a database of its own on the clinic's cluster. An
/// immediate restart of that cluster (every backend killed, crash recovery)
/// while the pusher is half-way through a large transaction's batches
/// loses no change and journals none twice: afterwards the journal holds
/// each captured change exactly once, all delivered, and upstream equals
/// the clinic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_database_survives_an_immediate_restart_of_the_cluster_mid_batch() {
    const BULK: i64 = 20_000;
    let cluster = Arc::new(Cluster::start(ClusterOptions::default()));
    let local_db = cluster.create_database("journal_restart_l").await;
    let upstream_db = Cluster::shared().create_database("journal_restart_u").await;
    let mut pair = Pair::on(local_db, upstream_db, Mode::Postgres).await;
    pair.batch_size = 100;
    pair.write_config();
    pair.init().await;
    let _run = pair.spawn_run(&[]);
    let local = pair.local.connect().await;
    local.batch_execute("INSERT INTO services (name) VALUES ('before')").await.unwrap();
    local.batch_execute(&format!("INSERT INTO services (name) SELECT 'bulk ' || g FROM generate_series(1, {BULK}) g")).await.unwrap();
    drop(local);
    let journal = pair.local.journal();
    let synced = wait_for("the pusher half-way through the large transaction", Duration::from_secs(120), || async {
        let n = count(&journal, "SELECT count(*) FROM _sync_pending WHERE synced AND data->>'name' LIKE 'bulk %'").await;
        (n > 0 && n < BULK).then_some(n)
    })
    .await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart(StopMode::Immediate)).await.unwrap();
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('after the restart')").await.unwrap();
    pair.wait_converged(Duration::from_secs(180)).await;
    let j = |sql: &'static str| {
        let journal = &journal;
        async move { count(journal, sql).await }
    };
    assert!(synced < BULK, "the restart came mid-batch ({synced} of {BULK} delivered before it)");
    assert_eq!(j("SELECT count(*) FROM _sync_pending").await, BULK + 2, "each change journaled exactly once");
    assert_eq!(j("SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)) FROM _sync_pending").await, 0, "no duplicate position");
    assert_eq!(j("SELECT count(*) FROM _sync_pending WHERE NOT synced OR parked_at IS NOT NULL").await, 0, "all delivered");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, BULK + 2);
}

async fn exec(db: &TestDb, sql: &str) {
    db.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Records, from inside each writing transaction, the session's
/// `synchronous_commit`: on the journal (`_sync_journal` in the journal
/// database, written by capture's journal writer) and on `services` as the
/// down path writes it (under `session_replication_role = replica`, hence
/// `ENABLE ALWAYS`). Installed in both databases.
const SEEN_FUNCTION: &str = r#"
CREATE TABLE seen_commit_mode (tab text, role text, mode text);
CREATE FUNCTION seen_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO seen_commit_mode VALUES (TG_TABLE_NAME, current_setting('session_replication_role'), current_setting('synchronous_commit'));
  RETURN NULL;
END $$;
"#;
const SEEN_JOURNAL: &str =
    "CREATE TRIGGER seen_commit_mode AFTER INSERT ON _sync_journal FOR EACH STATEMENT EXECUTE FUNCTION seen_commit_mode();";
const SEEN_LOCAL: &str =
    "CREATE TRIGGER seen_commit_mode AFTER INSERT OR UPDATE ON services FOR EACH STATEMENT EXECUTE FUNCTION seen_commit_mode();
ALTER TABLE services ENABLE ALWAYS TRIGGER seen_commit_mode;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_writer_and_the_down_path_commit_synchronously_on_a_database_that_does_not() {
    let pair = Pair::new("sync_commit_off", Mode::Postgres).await;
    pair.init().await;
    for db in [&pair.local, &pair.local.journal()] {
        exec(db, &format!("ALTER DATABASE {} SET synchronous_commit = off", centrovision_sync::catalog::quote_ident(&db.name))).await;
    }
    let plain: String = pair.local.connect().await.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    assert_eq!(plain, "off", "a new session on this database commits asynchronously");
    exec(&pair.local, "INSERT INTO services (name) VALUES ('up, journaled')").await;
    exec(&pair.local, &format!("{SEEN_FUNCTION}{SEEN_LOCAL}")).await;
    exec(&pair.local.journal(), &format!("{SEEN_FUNCTION}{SEEN_JOURNAL}")).await;
    exec(&pair.upstream, "INSERT INTO services (name) VALUES ('down, applied')").await;
    pair.once().await;
    pair.assert_converged().await;
    let seen =
        |tab: &str, role: &str| format!("SELECT count(*) FROM seen_commit_mode WHERE tab = '{tab}' AND role = '{role}' AND mode = 'on'");
    assert!(
        count(&pair.local.journal(), &seen("_sync_journal", "origin")).await >= 1,
        "the journal writer wrote with synchronous_commit = on"
    );
    assert!(count(&pair.local, &seen("services", "replica")).await >= 1, "the down path wrote with synchronous_commit = on");
    for db in [&pair.local, &pair.local.journal()] {
        let others = count(db, "SELECT count(*) FROM seen_commit_mode WHERE mode <> 'on'").await;
        assert_eq!(others, 0, "no service session wrote asynchronously in {}", db.name);
    }
}

const CODES: &str = r#"
CREATE TABLE "códigos" (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX "Índice Código" ON "códigos" (code);
"#;

/// `doctor` names the table and prints the exact fix; `once` refuses to
/// start with the same words; after the fix a delete syncs.
async fn an_unkeyable_replica_identity_is_reported_with_the_fix(hint: &str, identity: &str, what: &str) {
    let mut pair = Pair::new(hint, Mode::Postgres).await;
    for db in [&pair.local, &pair.upstream] {
        exec(db, CODES).await;
    }
    pair.tables = vec!["códigos".into()];
    pair.write_config();
    pair.init().await;
    exec(&pair.local, &format!(r#"ALTER TABLE "códigos" REPLICA IDENTITY {identity}"#)).await;
    exec(&pair.local, "INSERT INTO \"códigos\" (code) VALUES ('a'), ('b')").await;
    let fix = r#"ALTER TABLE "public"."códigos" REPLICA IDENTITY DEFAULT;"#;

    let doctor = pair.exec(&["doctor"], &[]).await;
    let out = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("FAIL  table \"public\".\"códigos\" has REPLICA IDENTITY {what}")), "{out}");
    assert!(out.contains(&format!("fix: {fix}")), "doctor prints the exact fix: {out}");

    let once = pair.exec(&["once"], &[]).await;
    let err = String::from_utf8_lossy(&once.stderr);
    assert_ne!(once.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("REPLICA IDENTITY {what}")) && err.contains(fix), "once refuses with the fix: {err}");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM \"códigos\"").await, 0, "nothing synced while refused");

    exec(&pair.local, r#"ALTER TABLE "códigos" REPLICA IDENTITY DEFAULT"#).await;
    pair.once().await;
    pair.assert_converged().await;
    exec(&pair.local, "DELETE FROM \"códigos\" WHERE code = 'a'").await;
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM \"códigos\"").await, 1, "the delete reached upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_index_without_the_primary_key_is_reported_with_the_fix() {
    an_unkeyable_replica_identity_is_reported_with_the_fix(
        "ri_index",
        r#"USING INDEX "Índice Código""#,
        r#"USING INDEX "Índice Código" ("code"), which does not carry the primary key "id""#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_nothing_is_reported_with_the_fix() {
    an_unkeyable_replica_identity_is_reported_with_the_fix("ri_nothing", "NOTHING", "NOTHING").await;
}
