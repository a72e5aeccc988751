//! What the service's local writes rest on, whatever the server's defaults:
//! every session commits synchronously, and a table whose deletes capture
//! could not key (REPLICA IDENTITY NOTHING, or an index without the primary
//! key) is reported with the exact fix instead of stopping capture at its
//! first delete.

use crate::support;
use support::TestDb;
use support::sync::{Mode, Pair, count};

async fn exec(db: &TestDb, sql: &str) {
    db.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Records, from inside each writing transaction, the session's
/// `synchronous_commit`: on the journal (`_sync_pending`, written by
/// capture's journal writer) and on `services` as the down path writes it
/// (under `session_replication_role = replica`, hence `ENABLE ALWAYS`).
const SEEN: &str = r#"
CREATE TABLE seen_commit_mode (tab text, role text, mode text);
CREATE FUNCTION seen_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO seen_commit_mode VALUES (TG_TABLE_NAME, current_setting('session_replication_role'), current_setting('synchronous_commit'));
  RETURN NULL;
END $$;
CREATE TRIGGER seen_commit_mode AFTER INSERT ON _sync_pending FOR EACH STATEMENT EXECUTE FUNCTION seen_commit_mode();
CREATE TRIGGER seen_commit_mode AFTER INSERT OR UPDATE ON services FOR EACH STATEMENT EXECUTE FUNCTION seen_commit_mode();
ALTER TABLE services ENABLE ALWAYS TRIGGER seen_commit_mode;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_writer_and_the_down_path_commit_synchronously_on_a_database_that_does_not() {
    let pair = Pair::new("sync_commit_off", Mode::Postgres).await;
    pair.init().await;
    exec(
        &pair.local,
        &format!("ALTER DATABASE {} SET synchronous_commit = off", centrovision_sync::catalog::quote_ident(&pair.local.name)),
    )
    .await;
    let plain: String = pair.local.connect().await.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    assert_eq!(plain, "off", "a new session on this database commits asynchronously");
    exec(&pair.local, "INSERT INTO services (name) VALUES ('up, journaled')").await;
    exec(&pair.local, SEEN).await;
    exec(&pair.upstream, "INSERT INTO services (name) VALUES ('down, applied')").await;
    pair.once().await;
    pair.assert_converged().await;
    let seen =
        |tab: &str, role: &str| format!("SELECT count(*) FROM seen_commit_mode WHERE tab = '{tab}' AND role = '{role}' AND mode = 'on'");
    assert!(count(&pair.local, &seen("_sync_pending", "origin")).await >= 1, "the journal writer wrote with synchronous_commit = on");
    assert!(count(&pair.local, &seen("services", "replica")).await >= 1, "the down path wrote with synchronous_commit = on");
    let others = count(&pair.local, "SELECT count(*) FROM seen_commit_mode WHERE mode <> 'on'").await;
    assert_eq!(others, 0, "no service session wrote asynchronously");
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
