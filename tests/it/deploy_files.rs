//! Checks of the operations files under deploy/: the installers, the systemd
//! unit, the least-privilege role SQL and the PostgreSQL config snippets.
//!
//! - `install_linux.sh` must pass `shellcheck` (required: CI installs it) and
//!   refuse to run without root;
//! - the systemd unit must carry the hardening we promise and pass
//!   `systemd-analyze verify` when that tool exists (skipped otherwise);
//! - `least_privilege_role.sql` must be re-runnable on a real cluster and
//!   give the role exactly what the service needs (and not more);
//! - end to end: a cluster configured only by the snippets, the role and
//!   pg_hba.conf lines from deploy/, runs `init` (in the documented
//!   temporary-SUPERUSER window), `doctor` and `run` as that role, and both
//!   sides converge;
//! - `install_windows.ps1` never downloads anything and, when `pwsh` is
//!   available, parses.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::sync::{Mode, Pair, terminate};
use support::{Cluster, ClusterOptions, wait_for};

const ROLE: &str = "centrovision_sync";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name)
}

fn read_deploy_file(name: &str) -> String {
    let path = deploy_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn describe(out: &Output) -> String {
    format!(
        "exit status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Whether `program` can be started (found on PATH and executable).
fn available(program: &str, probe_arg: &str) -> bool {
    Command::new(program).arg(probe_arg).output().is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// ---------------------------------------------------------------------------
// install_linux.sh
// ---------------------------------------------------------------------------

#[test]
fn install_script_passes_shellcheck() {
    let script = deploy_file("install_linux.sh");
    let out = match Command::new("shellcheck").arg(&script).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run shellcheck ({e}): install it with `apt-get install -y shellcheck` \
             (CI does, see .ci/run); this check is not optional"
        ),
    };
    assert!(out.status.success(), "shellcheck {} found problems:\n{}", script.display(), describe(&out));
}

#[test]
fn install_script_refuses_to_run_without_root_and_rejects_bad_arguments() {
    let script = deploy_file("install_linux.sh");
    let script = script.to_str().expect("utf-8 path");

    // --help works for anyone.
    let out = Command::new("bash").args([script, "--help"]).output().expect("run bash");
    assert!(out.status.success(), "--help failed:\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--uninstall"));

    // Argument errors come before the root check, and change nothing.
    let out = Command::new("bash").args([script, "--purge"]).output().expect("run bash");
    assert_eq!(out.status.code(), Some(1), "--purge alone must fail:\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--purge only goes with --uninstall"));

    // Not root: refused with a clear message before touching anything.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = if is_root() {
        // Drop to nobody for this one, on a copy nobody can read (the
        // checkout may be under a private home directory).
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let copy = dir.join("install_linux.sh");
        std::fs::copy(script, &copy).expect("copy script");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]).arg(&copy);
        c
    } else {
        let mut c = Command::new("bash");
        c.arg(script);
        c
    };
    let out = cmd.arg("/bin/true").output().expect("run the installer unprivileged");
    assert_eq!(out.status.code(), Some(1), "must refuse without root:\n{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "unclear refusal:\n{}", describe(&out));
}

// ---------------------------------------------------------------------------
// centrovision-sync.service
// ---------------------------------------------------------------------------

/// `[Section]` -> key -> values (a key may repeat), comments dropped.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("unit line without '=': {line:?}"));
        entries.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
    }
    entries
}

fn unit_values<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
}

#[test]
fn systemd_unit_has_the_required_hardening() {
    let entries = parse_unit(&read_deploy_file("centrovision-sync.service"));
    let expect = |section: &str, key: &str, value: &str| {
        let got = unit_values(&entries, section, key);
        assert_eq!(got, vec![value], "[{section}] {key}: expected exactly {value:?}, got {got:?}");
    };

    expect("Service", "ExecStart", "/opt/centrovision-sync/centrovision-sync --config /etc/centrovision-sync/config.toml run");
    expect("Service", "Type", "simple");
    expect("Service", "User", "centrovision");
    expect("Service", "Restart", "always");
    expect("Service", "RestartSec", "10");
    expect("Service", "KillSignal", "SIGTERM");
    expect("Service", "TimeoutStopSec", "30");
    expect("Service", "UMask", "0077");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("ReadWritePaths", "/var/log/centrovision-sync"),
        ("ReadOnlyPaths", "/etc/centrovision-sync"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallArchitectures", "native"),
    ] {
        expect("Service", key, value);
    }
    expect("Unit", "After", "network-online.target postgresql.service");
    expect("Unit", "Wants", "network-online.target");
    expect("Install", "WantedBy", "multi-user.target");

    // Nothing may widen what ProtectSystem=strict allows beyond the log dir.
    for key in ["ReadWritePaths", "StateDirectory", "LogsDirectory", "RuntimeDirectory"] {
        for v in unit_values(&entries, "Service", key) {
            assert_eq!(v, "/var/log/centrovision-sync", "unexpected writable path {key}={v}");
        }
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_when_available() {
    if !available("systemd-analyze", "--version") {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd to run this check)");
        return;
    }
    // `verify` insists that ExecStart's binary exists, and it is not
    // installed here: check a copy whose ExecStart runs /bin/true with the
    // same arguments. Everything else is verified as shipped.
    let unit = read_deploy_file("centrovision-sync.service");
    let installed = "ExecStart=/opt/centrovision-sync/centrovision-sync ";
    assert!(unit.contains(installed), "ExecStart changed; update this test");
    let checked = unit.replace(installed, "ExecStart=/bin/true ");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("centrovision-sync.service");
    std::fs::write(&path, checked).expect("write unit copy");

    let out = Command::new("systemd-analyze").arg("verify").arg(&path).env("SYSTEMD_LOG_COLOR", "0").output().expect("run systemd-analyze");
    // verify exits 0 even for unknown keys or unparsable values, which it
    // reports as "<file>:<line>: ..." warnings: any line about our file fails.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("centrovision-sync.service")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify rejected the unit:\n{}", describe(&out));
}

// ---------------------------------------------------------------------------
// least_privilege_role.sql
// ---------------------------------------------------------------------------

/// Runs deploy/least_privilege_role.sql with psql as the cluster superuser
/// (or `as_role`), off the async runtime.
async fn run_role_sql(cluster: &Cluster, dbname: &str, password: Option<&str>, as_role: Option<(&str, &str)>) -> Output {
    let mut cmd = cluster.tool("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f"]).arg(deploy_file("least_privilege_role.sql"));
    if let Some(pw) = password {
        cmd.arg("-v").arg(format!("sync_password={pw}"));
    }
    if let Some((user, pw)) = as_role {
        cmd.env("PGUSER", user).env("PGPASSWORD", pw);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("run psql")).await.expect("join psql")
}

async fn query_bool(client: &tokio_postgres::Client, sql: &str) -> bool {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")).get(0)
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_role_sql_is_idempotent_on_a_real_cluster() {
    // Roles are cluster-wide; this is the only test of this binary that uses
    // the shared cluster's centrovision_sync role.
    let cluster = Cluster::shared();
    let db = cluster.create_database("role_sql").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "CREATE TABLE branches (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text,
                                    updated_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE patients (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                    branch_id uuid REFERENCES branches(id),
                                    updated_at timestamptz NOT NULL DEFAULT now());
             -- serial key (sequence grant) and row level security (BYPASSRLS)
             CREATE TABLE rooms (id bigserial PRIMARY KEY, name text,
                                 updated_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE rooms ENABLE ROW LEVEL SECURITY;
             CREATE TABLE not_synced (id int);
             -- a control table someone else created (e.g. the trigger-era design)
             CREATE TABLE _sync_log (id serial PRIMARY KEY, note text);",
        )
        .await
        .expect("create sample tables");

    let password = "cvsync-Role-Test-7f3a";

    // First run needs the password; the second and third must succeed on the
    // existing role (with and without the password: without keeps it).
    for (run, pw) in [(1, Some(password)), (2, Some(password)), (3, None)] {
        let out = run_role_sql(cluster, &db.name, pw, None).await;
        assert!(out.status.success(), "run {run} of least_privilege_role.sql failed:\n{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("skipped (no such table in schema public): profiles"),
            "run {run}: missing tables must be reported:\n{}",
            describe(&out)
        );
    }

    // Role attributes: least privilege, BYPASSRLS only because rooms has RLS.
    let row = admin
        .query_one(
            "SELECT rolsuper, rolreplication, rolcanlogin, rolcreatedb, rolcreaterole, rolbypassrls
             FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .expect("read role");
    let attrs: (bool, bool, bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    assert_eq!(attrs, (false, true, true, false, false, true), "(super, repl, login, createdb, createrole, bypassrls)");

    for (sql, want) in [
        ("SELECT has_table_privilege('centrovision_sync', 'branches', 'SELECT, INSERT, UPDATE, DELETE')", true),
        ("SELECT has_table_privilege('centrovision_sync', 'rooms', 'SELECT, INSERT, UPDATE, DELETE')", true),
        ("SELECT has_sequence_privilege('centrovision_sync', 'rooms_id_seq', 'USAGE')", true),
        ("SELECT has_table_privilege('centrovision_sync', 'branches', 'TRUNCATE')", false),
        ("SELECT has_table_privilege('centrovision_sync', 'not_synced', 'SELECT')", false),
        ("SELECT has_schema_privilege('centrovision_sync', 'public', 'CREATE')", false),
        ("SELECT has_database_privilege('centrovision_sync', current_database(), 'CREATE')", false),
        ("SELECT has_database_privilege('centrovision_sync', current_database(), 'CONNECT')", true),
        ("SELECT pg_get_userbyid(relowner) = 'centrovision_sync' FROM pg_class WHERE relname = '_sync_log'", true),
        ("SELECT has_parameter_privilege('centrovision_sync', 'session_replication_role', 'SET')", true),
    ] {
        assert_eq!(query_bool(&admin, sql).await, want, "{sql}");
    }

    // What the service does, as the role (the password from run 1 was kept).
    let role_db = db.with_credentials(ROLE, password);
    let role = role_db.try_connect().await.expect("connect as centrovision_sync");
    role.batch_execute(
        "INSERT INTO branches (name) VALUES ('b1');
         INSERT INTO rooms (name) VALUES ('r1');  -- nextval() + RLS
         UPDATE branches SET name = 'b1*';
         DELETE FROM rooms;",
    )
    .await
    .expect("DML on synced tables as the role");

    let origin = format!("o_{}", db.name);
    admin.execute("SELECT pg_replication_origin_create($1)", &[&origin]).await.expect("superuser creates the origin");
    role.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .expect("pg_replication_origin_session_setup as the role");
    role.batch_execute(
        "BEGIN;
         SET LOCAL session_replication_role = replica;
         INSERT INTO branches (name) VALUES ('from upstream');",
    )
    .await
    .expect("SET LOCAL session_replication_role = replica as the role");
    let srr: String = role.query_one("SHOW session_replication_role", &[]).await.expect("show").get(0);
    assert_eq!(srr, "replica");
    role.batch_execute("COMMIT").await.expect("commit");
    role.execute("SELECT pg_replication_origin_session_reset()", &[]).await.expect("pg_replication_origin_session_reset as the role");

    role.execute("SELECT pg_logical_emit_message(false, 'centrovision-sync-test', 'x')", &[])
        .await
        .expect("pg_logical_emit_message as the role");
    let slot = format!("s_{}", db.name);
    role.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .expect("create a logical slot as the role (REPLICATION)");
    role.execute("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", &[&slot])
        .await
        .expect("pg_replication_slot_advance as the role");
    role.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.expect("drop the slot as the role");

    // What it must not be able to do. CREATE PUBLICATION ... FOR TABLE needs
    // table ownership: the reason `init` runs in a SUPERUSER window.
    for sql in ["CREATE PUBLICATION p_test FOR TABLE branches", "CREATE TABLE public.planted (i int)", "SELECT * FROM not_synced"] {
        let err = role.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), "42501", "{sql}: expected insufficient_privilege, got {err:?}");
    }
    drop(role);

    // A non-superuser cannot run the script (clear message, psql exit 3).
    let out = run_role_sql(cluster, &db.name, None, Some((ROLE, password))).await;
    assert_eq!(out.status.code(), Some(3), "must refuse a non-superuser:\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be run by a PostgreSQL superuser"), "{}", describe(&out));

    // The origin is cluster-wide: leave the shared cluster as we found it.
    wait_for("origin released", Duration::from_secs(10), || async {
        admin.execute("SELECT pg_replication_origin_drop($1)", &[&origin]).await.ok()
    })
    .await;
}

// ---------------------------------------------------------------------------
// End to end: snippets + role + service
// ---------------------------------------------------------------------------

/// The active settings of postgresql.conf.snippet, as config lines.
fn conf_snippet_settings() -> Vec<String> {
    read_deploy_file("postgresql.conf.snippet")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// pg_hba.conf: the superuser line the harness needs, then the snippet's
/// active lines with the database names replaced (the clinic's and its
/// journal database).
fn hba_with_snippet(database: &str) -> String {
    let mut text = String::from("host all postgres 127.0.0.1/32 scram-sha-256\n");
    let mut rules = 0;
    for line in read_deploy_file("pg_hba.conf.snippet").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0].starts_with('#') {
            continue;
        }
        assert_eq!(fields[1], "centrovision,centrovision_journal", "snippet line {line:?}: unexpected database");
        assert_eq!(fields[2], ROLE, "snippet line {line:?}: unexpected user");
        let databases = format!("{database},{database}_journal");
        let mut fields = fields;
        fields[1] = &databases;
        text.push_str(&fields.join(" "));
        text.push('\n');
        rules += 1;
    }
    assert!(rules >= 2, "pg_hba.conf.snippet has no active lines");
    text
}

fn psql_as_role(cluster: &Cluster, password: &str, conninfo: &str, command: &str) -> Output {
    cluster
        .tool("psql")
        .env("PGUSER", ROLE)
        .env("PGPASSWORD", password)
        .args(["-X", "-d", conninfo, "-c", command])
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snippets_and_role_run_the_service_end_to_end() {
    // wal_level = replica: only the snippet can make this cluster usable.
    let cluster = Cluster::start(ClusterOptions { wal_level: "replica", extra_conf: conf_snippet_settings(), ..Default::default() });
    let local = cluster.create_database("deploy_local").await;
    let upstream = cluster.create_database("deploy_upstream").await;
    {
        let c = local.connect().await;
        for (setting, want) in [("wal_level", "logical"), ("max_slot_wal_keep_size", "10GB")] {
            let got: String = c.query_one(&format!("SHOW {setting}"), &[]).await.unwrap().get(0);
            assert_eq!(got, want, "postgresql.conf.snippet did not set {setting}");
        }
    }
    let mut pair = Pair::on(local.clone(), upstream.clone(), Mode::Postgres).await;

    // The role, as documented (tables were created by the superuser = "the app").
    let password = "cvsync-E2E-Pw-91c2";
    let out = run_role_sql_on(&cluster, &local.name, Some(password));
    assert!(out.status.success(), "least_privilege_role.sql failed:\n{}", describe(&out));

    // Only the snippet's pg_hba.conf lines (plus the harness superuser).
    std::fs::write(cluster.data_dir().join("pg_hba.conf"), hba_with_snippet(&local.name)).expect("write pg_hba.conf");
    let admin = local.connect().await;
    admin.execute("SELECT pg_reload_conf()", &[]).await.expect("reload");
    let bad: i64 = admin.query_one("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL", &[]).await.unwrap().get(0);
    assert_eq!(bad, 0, "pg_hba.conf.snippet has lines PostgreSQL rejects");
    // The reload is asynchronous: wait until the role is refused elsewhere.
    let elsewhere = upstream.with_credentials(ROLE, password);
    wait_for("pg_hba.conf reloaded", Duration::from_secs(30), || async {
        match elsewhere.try_connect().await {
            Err(e) if e.code().is_some_and(|c| c.code() == "28000") => Some(()),
            _ => None,
        }
    })
    .await;

    // Logical replication connections match the database line; physical ones
    // are refused (the snippet has no "replication" line on purpose).
    let logical = psql_as_role(&cluster, password, &format!("dbname={} replication=database", local.name), "IDENTIFY_SYSTEM");
    assert!(logical.status.success(), "logical replication connection refused:\n{}", describe(&logical));
    let physical = psql_as_role(&cluster, password, &format!("dbname={} replication=true", local.name), "IDENTIFY_SYSTEM");
    assert!(!physical.status.success(), "a physical replication connection must be refused");
    assert!(
        String::from_utf8_lossy(&physical.stderr).contains("no pg_hba.conf entry for replication connection"),
        "{}",
        describe(&physical)
    );

    // init, in the documented SUPERUSER window, connected as the role.
    pair.local = local.with_credentials(ROLE, password);
    pair.write_config();
    admin.batch_execute("ALTER ROLE centrovision_sync SUPERUSER").await.expect("elevate");
    pair.init().await;
    let out = run_role_sql_on(&cluster, &local.name, None);
    assert!(out.status.success(), "re-running least_privilege_role.sql failed:\n{}", describe(&out));
    assert!(
        !query_bool(&admin, "SELECT rolsuper FROM pg_roles WHERE rolname = 'centrovision_sync'").await,
        "re-running the role SQL must remove SUPERUSER"
    );
    let (owned, foreign): (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE relowner = 'centrovision_sync'::regrole),
                        count(*) FILTER (WHERE relowner <> 'centrovision_sync'::regrole)
                 FROM pg_class WHERE relname LIKE '\\_sync\\_%' AND relkind = 'r'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(owned >= 4 && foreign == 0, "control tables: {owned} owned by the role, {foreign} by others");

    // doctor, as the role: nothing to fix.
    let out = pair.exec(&["doctor"], &[]).await;
    assert!(out.status.success(), "doctor as the least-privileged role found problems:\n{}", describe(&out));

    // run, as the role: both directions.
    let mut child = pair.spawn_run(&[]);
    admin.batch_execute("INSERT INTO branches (name) VALUES ('made locally')").await.expect("local write");
    upstream.connect().await.batch_execute("INSERT INTO branches (name) VALUES ('made upstream')").await.expect("upstream write");
    if tokio::time::timeout(Duration::from_secs(120), pair.wait_converged(Duration::from_secs(150))).await.is_err() {
        support::sync::kill9(&mut child);
        panic!(
            "the service, running as the least-privileged role, did not converge within 120 s:\n{}",
            support::sync::tail(&pair.run_log(), 60)
        );
    }
    let n: i64 = admin.query_one("SELECT count(*) FROM branches", &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "both rows on both sides");
    let status = terminate(&mut child);
    let log = pair.run_log();
    assert!(status.success(), "run exited with {status} on SIGTERM:\n{}", support::sync::tail(&log, 60));
    assert!(
        !log.contains("permission denied") && !log.contains("must be owner"),
        "privilege errors while running as the role:\n{}",
        support::sync::tail(&log, 60)
    );
}

/// Like [`run_role_sql`], for a dedicated cluster (blocking).
fn run_role_sql_on(cluster: &Cluster, dbname: &str, password: Option<&str>) -> Output {
    let mut cmd = cluster.tool("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f"]).arg(deploy_file("least_privilege_role.sql"));
    if let Some(pw) = password {
        cmd.arg("-v").arg(format!("sync_password={pw}"));
    }
    cmd.output().expect("run psql")
}

// ---------------------------------------------------------------------------
// install_windows.ps1
// ---------------------------------------------------------------------------

#[test]
fn windows_installer_never_downloads_and_parses_when_pwsh_is_available() {
    let text = read_deploy_file("install_windows.ps1");
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with('#') {
            continue;
        }
        let lower = code.to_ascii_lowercase();
        for forbidden in
            ["invoke-webrequest", "invoke-restmethod", "downloadfile", "start-bitstransfer", "net.webclient", "iwr ", "curl ", "wget "]
        {
            assert!(!lower.contains(forbidden), "install_windows.ps1 must not download anything: {line:?}");
        }
    }
    for must in ["'CentroVisionSync'", r"'C:\CentroVision\sync-service'", r"'C:\CentroVision\logs'", "WindowsBuiltInRole]::Administrator"] {
        assert!(text.contains(must), "install_windows.ps1 lacks {must}");
    }

    if !available("pwsh", "-Version") {
        eprintln!("SKIPPED: pwsh (PowerShell) is not installed; install_windows.ps1 was not parsed");
        return;
    }
    let path = deploy_file("install_windows.ps1");
    let script = format!(
        "$errors = $null; [System.Management.Automation.Language.Parser]::ParseFile('{}', [ref]$null, [ref]$errors) | Out-Null; \
         if ($errors) {{ $errors | ForEach-Object {{ $_.ToString() }}; exit 1 }}",
        path.display().to_string().replace('\'', "''")
    );
    let out = Command::new("pwsh").args(["-NoProfile", "-NonInteractive", "-Command", &script]).output().expect("run pwsh");
    assert!(out.status.success(), "install_windows.ps1 does not parse:\n{}", describe(&out));
}
