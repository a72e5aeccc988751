//! Bad input gets a clear, specific error, a non-zero exit code, no panic,
//! and never loses data.

use crate::support;

use std::process::Output;

use support::sync::{Mode, Pair, binary};
use support::{Cluster, ClusterOptions};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "expected exit {code}, got {:?}:\n{err}", o.status);
    assert!(!err.contains("panicked"), "panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
}

fn run_with_config(text: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(binary()).arg("--config").arg(&path).args(args).output().unwrap()
}

const VALID: &str = r#"
[supabase]
mode = "postgres"
db_url = "host=127.0.0.1 port=1 user=u password=upstream-secret-pw dbname=d"

[local_postgres]
host = "127.0.0.1"
port = 1
database = "centrovision"
user = "centrovision_sync"
password = "local-secret-pw"
"#;

#[test]
fn a_missing_config_file_exits_2_and_names_the_path() {
    let o = std::process::Command::new(binary()).args(["--config", "/nonexistent/config.toml", "status"]).output().unwrap();
    assert_clean_failure(&o, 2, &["/nonexistent/config.toml"]);
}

#[test]
fn an_unknown_key_exits_2_and_names_it() {
    let o = run_with_config(&format!("{VALID}\n[sync]\nintervall_seconds = 3\n"), &["status"]);
    assert_clean_failure(&o, 2, &["intervall_seconds"]);
}

#[test]
fn a_wrong_type_exits_2_and_names_the_key() {
    let o = run_with_config(&VALID.replace("port = 1\ndatabase", "port = \"five\"\ndatabase"), &["status"]);
    assert_clean_failure(&o, 2, &["port"]);
}

#[test]
fn a_truncated_config_exits_2() {
    let o = run_with_config(&VALID[..VALID.len() / 2], &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn a_missing_required_key_exits_2_and_names_it() {
    let o = run_with_config(&VALID.replace("database = \"centrovision\"\n", ""), &["status"]);
    assert_clean_failure(&o, 2, &["[local_postgres] database"]);
}

#[test]
fn an_unreachable_local_database_is_a_clear_error_without_secrets() {
    let port = support::free_port();
    let o = run_with_config(&VALID.replace("port = 1\ndatabase", &format!("port = {port}\ndatabase")), &["init"]);
    assert_clean_failure(&o, 1, &["local database"]);
    assert!(!stderr(&o).contains("local-secret-pw") && !stderr(&o).contains("upstream-secret-pw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_local_password_is_a_clear_error_without_the_password() {
    let mut pair = Pair::new("wrong_pw", Mode::Postgres).await;
    pair.local = pair.local.with_credentials("postgres", "definitely-wrong-pw");
    pair.write_config();
    let o = pair.exec(&["init"], &[]).await;
    assert_clean_failure(&o, 1, &["password"]);
    assert!(!stderr(&o).contains("definitely-wrong-pw"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_refused_with_the_fix() {
    let cluster = Cluster::start(ClusterOptions { wal_level: "replica", ..Default::default() });
    let local = cluster.create_database("wal_replica_l").await;
    let upstream = cluster.create_database("wal_replica_u").await;
    let pair = Pair::on(local, upstream, Mode::Postgres).await;
    let o = pair.exec(&["init"], &[]).await;
    assert_clean_failure(&o, 1, &["wal_level", "ALTER SYSTEM SET wal_level = logical"]);
    let d = pair.exec(&["doctor"], &[]).await;
    assert_eq!(d.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&d.stdout).contains("wal_level = logical"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_primary_key_or_updated_at_or_missing_are_named() {
    let mut pair = Pair::new("bad_tables", Mode::Postgres).await;
    let local = pair.local.connect().await;
    local.batch_execute("CREATE TABLE no_pk (id uuid, updated_at timestamptz); CREATE TABLE no_ts (id uuid PRIMARY KEY)").await.unwrap();
    for (table, needle) in [("no_pk", "no primary key"), ("no_ts", "no updated_at"), ("not_there", "not_there")] {
        pair.tables = vec!["branches".into(), table.into()];
        pair.write_config();
        let o = pair.exec(&["init"], &[]).await;
        assert_clean_failure(&o, 1, &[table, needle]);
    }
    // Nothing was created by the refused init.
    let slots: i64 = local.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&pair.slot]).await.unwrap().get(0);
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_before_init_says_to_run_init() {
    let pair = Pair::new("no_init", Mode::Postgres).await;
    let o = pair.exec(&["once"], &[]).await;
    assert_clean_failure(&o, 1, &["centrovision-sync init"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_is_harmless() {
    let pair = Pair::new("init_twice", Mode::Postgres).await;
    // A fresh install shows the operator no server notices (e.g. "does not
    // exist, skipping" from a migration's cleanup).
    let first = pair.ok(&["init", "--upstream"]).await;
    let said = format!("{}{}", String::from_utf8_lossy(&first.stdout), stderr(&first));
    assert!(!said.contains("NOTICE"), "{said}");
    pair.local.connect().await.batch_execute("INSERT INTO branches (name) VALUES ('kept')").await.unwrap();
    pair.init().await;
    pair.once().await;
    pair.assert_converged().await;
    let d = pair.exec(&["doctor"], &[]).await;
    assert!(d.status.success(), "{}\n{}", String::from_utf8_lossy(&d.stdout), stderr(&d));
}

/// Runs `once` while another session holds what it needs (`hold`, with
/// `arg`) and lets go of it (`release`) a second later; returns its output.
async fn once_while_held_for_a_second(pair: &Pair, hold: &'static str, release: &'static str, arg: String) -> Output {
    pair.init().await;
    let holder = pair.local.connect().await;
    holder.execute(hold, &[&arg]).await.unwrap_or_else(|e| panic!("{hold}: {e}"));
    let release = tokio::spawn(async move {
        // The scenario (a holder that goes a moment later), not a wait for sync.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        holder.batch_execute(release).await.unwrap_or_else(|e| panic!("{release}: {e}"));
    });
    let o = pair.exec(&["once"], &[]).await;
    release.await.expect("release task");
    o
}

/// The server frees the instance lock of a process that exited only when it
/// notices the closed connection; a command started in that moment (systemd
/// restarting `run`, a `once` right after another) waits for it instead of
/// reporting a second instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_released_a_moment_after_start_is_waited_for_not_reported_as_a_second_instance() {
    let pair = Pair::new("lock_grace", Mode::Postgres).await;
    let key = format!("centrovision-sync/{}", pair.slot);
    let o = once_while_held_for_a_second(&pair, "SELECT pg_advisory_lock(hashtextextended($1, 0))", "SELECT pg_advisory_unlock_all()", key)
        .await;
    assert!(o.status.success(), "once waited for the lock: {}", stderr(&o));
}

/// Likewise the replication origin the down path writes under: a session
/// of an instance that just stopped may hold it a moment longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_released_a_moment_after_start_is_waited_for() {
    let pair = Pair::new("origin_grace", Mode::Postgres).await;
    let origin = format!("o_{}", pair.local.name);
    let o = once_while_held_for_a_second(
        &pair,
        "SELECT pg_replication_origin_session_setup($1)",
        "SELECT pg_replication_origin_session_reset()",
        origin,
    )
    .await;
    assert!(o.status.success(), "once waited for the origin: {}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_slot_is_refused() {
    let pair = Pair::new("second_instance", Mode::Postgres).await;
    pair.init().await;
    let mut first = pair.spawn_run(&[]);
    // Wait until the first holds its lock (its walsender is active).
    let local = pair.local.connect().await;
    support::wait_for("first instance streaming", std::time::Duration::from_secs(30), || async {
        let active: bool = local
            .query_one("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", &[&pair.slot])
            .await
            .unwrap()
            .get(0);
        active.then_some(())
    })
    .await;
    let o = pair.exec(&["once"], &[]).await;
    support::sync::kill9(&mut first);
    assert_clean_failure(&o, 1, &["already running"]);
}
