//! Smoke tests for the test harness itself (tests/it/support): if these fail,
//! every other integration test's failure is suspect, so they check the
//! harness's promises directly: logical WAL, per-test databases, real
//! password auth, restarts keeping data, options reaching postgresql.conf,
//! and cleanup both on Drop and when the test process is killed.

use crate::support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Cluster, ClusterOptions, StopMode, wait_for, wait_for_state};
use tokio_postgres::error::SqlState;

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client.query_one(&format!("SHOW {setting}"), &[]).await.unwrap_or_else(|e| panic!("SHOW {setting}: {e:?}")).get(0)
}

#[tokio::test]
async fn shared_cluster_runs_with_logical_wal_level() {
    let cluster = Cluster::shared();
    let first = cluster.create_database("Shared cluster: first DB!").await;
    let second = cluster.create_database("shared cluster: first db").await;
    assert_ne!(first.name, second.name, "similar hints must still give distinct names");
    assert!(first.name.starts_with("shared_cluster_first_db_"), "got {}", first.name);

    let client = first.connect().await;
    assert_eq!(show(&client, "wal_level").await, "logical");
    assert_eq!(show(&client, "listen_addresses").await, "127.0.0.1");
    assert_eq!(show(&client, "max_replication_slots").await, "1024");
    assert_eq!(show(&client, "max_wal_senders").await, "64");
    assert_eq!(show(&client, "max_connections").await, "300");
    assert_eq!(show(&client, "synchronous_commit").await, "on");
    assert_eq!(show(&client, "server_version_num").await, cluster.server_version_num().to_string());

    let names: Vec<String> = client
        .query(
            "SELECT datname FROM pg_database WHERE datname = ANY($1) ORDER BY datname",
            &[&vec![first.name.clone(), second.name.clone()]],
        )
        .await
        .expect("list databases")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected = vec![first.name.clone(), second.name.clone()];
    expected.sort();
    assert_eq!(names, expected);

    let current: String = second.connect().await.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(current, second.name);
}

#[tokio::test]
async fn databases_created_concurrently_get_distinct_names() {
    let cluster = Cluster::shared();
    let dbs = futures_util::future::join_all((0..4).map(|_| cluster.create_database("concurrent"))).await;
    let mut names: Vec<&str> = dbs.iter().map(|db| db.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let db = Cluster::shared().create_database("wrong password").await;
    let err = match db.with_credentials(db.user(), "not-the-password").try_connect().await {
        Ok(_) => panic!("connecting with a wrong password succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    // And the right one still works.
    db.connect().await;
}

#[tokio::test]
async fn client_tools_from_bin_dir_reach_the_cluster() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("psql").await;
    let out = cluster
        .tool("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &db.name, "-c", "SELECT current_user"])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), cluster.superuser());
}

#[tokio::test]
async fn dedicated_cluster_survives_an_immediate_restart() {
    let cluster = Cluster::start(ClusterOptions::default());
    let db = cluster.create_database("restart").await;
    let client = db.connect().await;
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'kept');").await.unwrap();
    let port = cluster.port();

    cluster.restart(StopMode::Immediate);
    assert_eq!(cluster.port(), port);
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err(), "old connection survived");

    let client = db.connect().await;
    let v: String = client.query_one("SELECT v FROM t WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(v, "kept");

    cluster.stop(StopMode::Fast);
    assert!(db.try_connect().await.is_err(), "connected to a stopped cluster");
    cluster.start_again();
    let n: i64 = db.connect().await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn dedicated_cluster_starts_again_after_its_postmaster_is_killed() {
    let cluster = Cluster::start(ClusterOptions::default());
    let db = cluster.create_database("kill -9").await;
    db.connect().await.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await.unwrap();
    let port = cluster.port();

    cluster.kill_postmaster();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "a killed postmaster still accepts connections");
    // Works even while the dead postmaster is still an unreaped zombie.
    cluster.start_again();
    let n: i64 = db.connect().await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // stop() on a dead server is a no-op, and Drop must not hang on it.
    cluster.kill_postmaster();
    cluster.stop(StopMode::Fast);
    let dropped = std::time::Instant::now();
    drop(cluster);
    assert!(dropped.elapsed() < Duration::from_secs(10), "drop took {:?}", dropped.elapsed());
}

#[tokio::test]
async fn dedicated_cluster_applies_options_and_is_removed_on_drop() {
    let cluster =
        Cluster::start(ClusterOptions { wal_level: "replica", extra_conf: vec!["max_slot_wal_keep_size = 1MB".to_owned()], fsync: true });
    assert_ne!(cluster.port(), Cluster::shared().port());
    let client = cluster.connect("postgres").await;
    assert_eq!(show(&client, "wal_level").await, "replica");
    assert_eq!(show(&client, "max_slot_wal_keep_size").await, "1MB");
    assert_eq!(show(&client, "fsync").await, "on");
    assert!(cluster.log_file().starts_with(cluster.data_dir()));

    let data_dir = cluster.data_dir().to_owned();
    let port = cluster.port();
    drop(client);
    drop(cluster);
    assert!(!data_dir.exists(), "{} still exists after drop", data_dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts connections");
}

#[tokio::test]
#[should_panic(expected = "waiting for: the impossible")]
async fn wait_for_panics_with_what_it_waited_for() {
    wait_for("the impossible", Duration::from_millis(50), || async { None::<()> }).await;
}

#[tokio::test]
async fn wait_for_returns_once_the_condition_holds() {
    let mut polls = 0;
    let seen = wait_for_state("three polls", Duration::from_secs(5), || {
        polls += 1;
        let n = polls;
        async move { if n >= 3 { Ok(n) } else { Err(format!("poll {n}")) } }
    })
    .await;
    assert_eq!(seen, 3);
}

const CHILD_OUT_ENV: &str = "HARNESS_SMOKE_CHILD_OUT";

/// Run by `watchdog_cleans_up_after_the_test_process_is_killed` in a child
/// process; does nothing when run directly.
#[tokio::test]
#[ignore = "helper process for watchdog_cleans_up_after_the_test_process_is_killed"]
async fn helper_starts_the_shared_cluster_and_waits_to_be_killed() {
    let Some(out) = std::env::var_os(CHILD_OUT_ENV) else {
        return;
    };
    let cluster = Cluster::shared();
    let _client = cluster.create_database("child").await.connect().await;
    let report = format!("{}\n{}\n", cluster.port(), cluster.data_dir().display());
    std::fs::write(format!("{}.tmp", out.to_string_lossy()), report).unwrap();
    std::fs::rename(format!("{}.tmp", out.to_string_lossy()), &out).unwrap();
    // Not a timed sleep: block until the parent SIGKILLs us.
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn watchdog_cleans_up_after_the_test_process_is_killed() {
    let scratch = tempfile::tempdir().unwrap();
    let report = scratch.path().join("child-cluster");
    let child_log = std::fs::File::create(scratch.path().join("child.log")).unwrap();
    // libtest names a test by its module path without the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("{module}::helper_starts_the_shared_cluster_and_waits_to_be_killed")])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_OUT_ENV, &report)
        .stdin(Stdio::null())
        .stdout(child_log.try_clone().unwrap())
        .stderr(child_log)
        .spawn()
        .expect("spawn the helper test process");

    let (port, data_dir) = wait_for_state("the child process to start its cluster", Duration::from_secs(60), || {
        let exited = child.try_wait().unwrap();
        let report = report.clone();
        let log = scratch.path().join("child.log");
        async move {
            if let Ok(text) = std::fs::read_to_string(&report) {
                let mut lines = text.lines();
                let port: u16 = lines.next().unwrap().parse().unwrap();
                return Ok((port, PathBuf::from(lines.next().unwrap())));
            }
            if let Some(status) = exited {
                panic!("helper exited early ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
            Err("no report yet")
        }
    })
    .await;
    assert!(data_dir.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "child cluster not listening");

    child.kill().unwrap(); // SIGKILL: no destructors, no atexit.
    child.wait().unwrap();

    wait_for_state("the watchdog to stop the child's cluster and remove its dir", Duration::from_secs(30), || {
        let data_dir = data_dir.clone();
        async move {
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            let exists = data_dir.exists();
            if !listening && !exists { Ok(()) } else { Err(format!("listening={listening} dir_exists={exists}")) }
        }
    })
    .await;
}
