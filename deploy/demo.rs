//! The README's quick start: a local and an "upstream" throwaway cluster
//! with a sample CentroVision schema, the service running between them in
//! REST mode (through the PostgREST stand-in for Supabase's HTTP layer), a
//! change made on each side, and both arriving. Run: `bash deploy/demo.sh`.

// The integration tests' kit; the demo uses only part of it.
#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, reason = "the demo uses a few pieces of the test kit")]
mod support;

use std::time::{Duration, Instant};

use centrovision_sync::commands::{Cli, dispatch};
use clap::Parser;
use support::postgrest::PostgrestStandIn;
use support::{Cluster, TestDb};

async fn wait_row(db: &TestDb, sql: &str, timeout: Duration) -> Duration {
    let c = db.connect().await;
    let started = Instant::now();
    loop {
        let n: i64 = c.query_one(sql, &[]).await.expect("query").get(0);
        if n > 0 {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    println!("== starting two throwaway PostgreSQL clusters (local clinic server, and upstream)");
    let local_cluster = Cluster::start(Default::default());
    let upstream_cluster = Cluster::start(Default::default());
    let local = local_cluster.create_database("clinic").await;
    let upstream = upstream_cluster.create_database("supabase").await;
    for db in [&local, &upstream] {
        db.connect().await.batch_execute(support::sync::SCHEMA).await.expect("sample schema");
    }
    // The project's API roles exist before its SQL is installed (the SQL
    // grants EXECUTE to service_role only if that role exists), as on Supabase.
    let key = "sb_secret_demo_only";
    let rest = PostgrestStandIn::start(&upstream, key).await;
    // What a clinic pastes into the Supabase SQL editor (`init --print-upstream-sql`).
    let mut upstream_sql = support::sync::upstream_sql();
    for t in ["branches", "patients", "services", "appointments", "invoices", "invoice_items"] {
        upstream_sql.push_str(&format!("SELECT centrovision_sync.enroll_table('public', '{t}');\n"));
    }
    upstream.connect().await.batch_execute(&upstream_sql).await.expect("upstream SQL");
    println!("   local    127.0.0.1:{}  upstream 127.0.0.1:{}  REST {}", local.port(), upstream.port(), rest.url());

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[supabase]
url = "{url}"
service_key = "{key}"

[local_postgres]
host = "127.0.0.1"
port = {port}
database = "{db}"
user = "{user}"
password = "{pw}"

[sync]
interval_seconds = 2
tables = ["branches", "patients", "services", "appointments", "invoices", "invoice_items"]
health_check_seconds = 5

[logging]
level = "info"
"#,
            url = rest.url(),
            port = local.port(),
            db = local.name,
            user = local.user(),
            pw = local.password(),
        ),
    )
    .expect("write config");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod config");
    }
    let cfg = config.to_str().expect("utf-8 path").to_string();
    println!("== centrovision-sync init");
    let code = dispatch(Cli::parse_from(["centrovision-sync", "--config", &cfg, "init"])).await;
    assert_eq!(code, 0, "init failed");
    println!("== centrovision-sync run (in the background)");
    let run_cfg = cfg.clone();
    tokio::spawn(async move { dispatch(Cli::parse_from(["centrovision-sync", "--config", &run_cfg, "run"])).await });

    println!("== a receptionist registers a patient at the clinic (local database)");
    local
        .connect()
        .await
        .batch_execute("INSERT INTO branches (name) VALUES ('Tegucigalpa Centro'); INSERT INTO patients (branch_id, full_name, phone) SELECT id, 'María López', '+504 9999-0000' FROM branches")
        .await
        .expect("local insert");
    let t = wait_row(&upstream, "SELECT count(*) FROM patients WHERE full_name = 'María López'", Duration::from_secs(60)).await;
    println!("   arrived upstream after {} ms (streamed from the WAL)", t.as_millis());

    println!("== another branch books her an appointment in Supabase (upstream)");
    upstream
        .connect()
        .await
        .batch_execute(
            "INSERT INTO appointments (patient_id, starts_at, reason) SELECT id, now() + interval '1 day', 'control' FROM patients",
        )
        .await
        .expect("upstream insert");
    let t = wait_row(&local, "SELECT count(*) FROM appointments WHERE reason = 'control'", Duration::from_secs(60)).await;
    println!("   arrived locally after {} ms (polled every interval_seconds = 2)", t.as_millis());

    println!("== centrovision-sync status");
    dispatch(Cli::parse_from(["centrovision-sync", "--config", &cfg, "status"])).await;
    println!("== done: the clusters are removed as this program exits");
    // End now, service and all; the harness's watchdogs remove the clusters.
    std::process::exit(0);
}
