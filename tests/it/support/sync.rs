//! A local + upstream database pair with the sample CentroVision schema,
//! and the real `centrovision-sync` binary driven against it.
//!
//! Each test gets two fresh databases on the shared cluster (or on clusters
//! it starts itself), its own slot, publication and origin names, and a
//! config file in a temp dir. Commands run the compiled binary as a child
//! process, so crash tests can kill it for real.
//!
//! Project settings other than Supabase's defaults are a mode of their own,
//! so plain `cargo test` covers them: [`Mode::RestClinicSchemaLowMaxRows`]
//! puts the upstream tables in schema `clinic` (`[supabase] schema`, exposed
//! by the stand-in; the upstream database's search_path starts with it, so
//! the tests' own upstream SQL finds the tables unqualified) and lowers the
//! stand-in's max rows to [`LOWERED_MAX_ROWS`], below the pair's
//! `batch_size`. [`all_modes!`] runs a test in it besides postgres and rest.
//!
//! To run the whole suite under other settings by hand,
//! `PG_TEST_UPSTREAM_SCHEMA=<schema>` moves the upstream tables of every
//! pair made by [`Pair::new`]/[`Pair::on`] in `Mode::Postgres` or
//! `Mode::Rest` into that schema, and `PG_TEST_MAX_ROWS=<n>` sets every
//! stand-in's starting max rows (except in the mode above, which fixes both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::cluster::{Cluster, TestDb};
use super::postgrest::{FUNCTION_OWNER, FUNCTION_OWNER_PASSWORD, PostgrestStandIn, StandInOptions, give_tables_to_owner};
use super::wait::wait_for;

pub const SCHEMA: &str = include_str!("centrovision_schema.sql");
/// The synced sample tables, parents first.
pub const TABLES: [&str; 6] = ["branches", "patients", "services", "appointments", "invoices", "invoice_items"];

pub fn binary() -> PathBuf {
    // Set for integration tests and benches (not for the demo example).
    match option_env!("CARGO_BIN_EXE_centrovision-sync") {
        Some(path) => PathBuf::from(path),
        None => panic!("CARGO_BIN_EXE_centrovision-sync is unset: only integration tests and benches know the binary path"),
    }
}

/// How the service reaches upstream, and what the project's settings are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Postgres,
    /// Through the PostgREST stand-in for Supabase's HTTP layer, with a
    /// project's default API settings.
    Rest,
    /// Through the stand-in, on a project whose admin changed the defaults
    /// a clinic is most likely to meet changed: the synced tables in schema
    /// [`CLINIC_SCHEMA`] (`[supabase] schema`, an exposed schema, so every
    /// request carries its profile and the RPCs go through the entry points
    /// of `sql/upstream/004_api_schema.sql`), and "Max rows" lowered to
    /// [`LOWERED_MAX_ROWS`], below the pair's `batch_size` (500), so every
    /// full page the service asks for comes back short.
    RestClinicSchemaLowMaxRows,
}

/// The non-`public` upstream schema of [`Mode::RestClinicSchemaLowMaxRows`].
pub const CLINIC_SCHEMA: &str = "clinic";
/// The stand-in's max rows in [`Mode::RestClinicSchemaLowMaxRows`].
pub const LOWERED_MAX_ROWS: usize = 300;

impl Mode {
    /// Whether the service reaches upstream over HTTP (through the stand-in).
    pub fn is_rest(self) -> bool {
        match self {
            Mode::Postgres => false,
            Mode::Rest | Mode::RestClinicSchemaLowMaxRows => true,
        }
    }

    /// `[supabase] schema` for a pair in this mode: `public`, or
    /// `PG_TEST_UPSTREAM_SCHEMA` when set, unless the mode fixes it.
    fn upstream_schema(self) -> String {
        match self {
            Mode::RestClinicSchemaLowMaxRows => CLINIC_SCHEMA.to_owned(),
            Mode::Postgres | Mode::Rest => {
                std::env::var("PG_TEST_UPSTREAM_SCHEMA").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "public".to_owned())
            }
        }
    }
}

/// The upstream SQL without any table enrolled (`init --print-upstream-sql`
/// with no config).
pub fn upstream_sql() -> String {
    centrovision_sync::upstream::upstream_script(None)
}

/// Generates `name::<test>` for each `test => Mode` pair from
/// `async fn name(mode: Mode)` (what [`both_modes!`] and [`all_modes!`]
/// expand to).
#[macro_export]
macro_rules! mode_tests {
    ($name:ident: $($test:ident => $mode:ident),+) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$name($crate::support::sync::Mode::$mode).await
                }
            )+
        }
    };
}

/// Generates `name::postgres` and `name::rest` tests from `async fn name(mode: Mode)`.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $( $crate::mode_tests!($name: postgres => Postgres, rest => Rest); )*
    };
}

/// [`both_modes!`] plus `name::rest_in_schema_clinic_with_max_rows_300`
/// ([`Mode::RestClinicSchemaLowMaxRows`]): for the convergence tests, whose
/// promises must hold whatever the project's schema and max rows.
#[macro_export]
macro_rules! all_modes {
    ($($name:ident),* $(,)?) => {
        $(
            $crate::mode_tests!($name: postgres => Postgres, rest => Rest,
                                rest_in_schema_clinic_with_max_rows_300 => RestClinicSchemaLowMaxRows);
        )*
    };
}

pub struct Pair {
    pub local: TestDb,
    pub upstream: TestDb,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub mode: Mode,
    pub tables: Vec<String>,
    /// Extra `[sync]` lines for the config.
    pub sync_extra: String,
    /// Extra sections appended to the config (replaces the default
    /// `[logging]` section when it has one).
    pub sections: String,
    pub slot: String,
    /// The REST stand-in, in `Mode::Rest`.
    pub rest: Option<PostgrestStandIn>,
    /// The service key written to the config in REST mode.
    pub service_key: String,
    /// `[supabase] schema`: where the synced tables live upstream.
    pub upstream_schema: String,
    /// `[sync] batch_size` (500 unless a test changes it).
    pub batch_size: usize,
}

impl Pair {
    /// Two fresh databases on the shared cluster, schema loaded on both,
    /// config written (not yet `init`).
    pub async fn new(hint: &str, mode: Mode) -> Pair {
        let cluster = Cluster::shared();
        let local = cluster.create_database(&format!("{hint}_l")).await;
        let upstream = cluster.create_database(&format!("{hint}_u")).await;
        Pair::on(local, upstream, mode).await
    }

    /// A pair on given databases (e.g. an upstream on a dedicated cluster).
    pub async fn on(local: TestDb, upstream: TestDb, mode: Mode) -> Pair {
        Pair::on_in_schema(local, upstream, mode, &mode.upstream_schema()).await
    }

    /// Like [`new`](Self::new), with the upstream tables in `schema`
    /// (`[supabase] schema`), exposed by the stand-in next to Supabase's
    /// default schemas.
    pub async fn new_in_schema(hint: &str, mode: Mode, schema: &str) -> Pair {
        let cluster = Cluster::shared();
        let local = cluster.create_database(&format!("{hint}_l")).await;
        let upstream = cluster.create_database(&format!("{hint}_u")).await;
        Pair::on_in_schema(local, upstream, mode, schema).await
    }

    async fn on_in_schema(local: TestDb, upstream: TestDb, mode: Mode, schema: &str) -> Pair {
        local.connect().await.batch_execute(SCHEMA).await.expect("load sample schema");
        let in_schema = if schema == "public" {
            SCHEMA.to_owned()
        } else {
            format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path = \"{schema}\", public;\n{SCHEMA}\nRESET search_path;
                 ALTER DATABASE \"{}\" SET search_path = \"{schema}\", public;",
                upstream.name
            )
        };
        upstream.connect().await.batch_execute(&in_schema).await.expect("load sample schema upstream");
        let dir = tempfile::tempdir().expect("temp dir");
        let slot = format!("s_{}", local.name);
        let service_key = format!("test-service-key-{}", local.name);
        let rest = if mode.is_rest() {
            Some(PostgrestStandIn::start_with(&upstream, &service_key, standin_options(mode, schema)).await)
        } else {
            None
        };
        let mut p = Pair {
            config_path: dir.path().join("config.toml"),
            local,
            upstream,
            dir,
            mode,
            tables: TABLES.iter().map(|s| s.to_string()).collect(),
            sync_extra: String::new(),
            sections: String::new(),
            slot,
            rest,
            service_key,
            upstream_schema: schema.to_owned(),
            batch_size: 500,
        };
        p.write_config();
        p
    }

    pub fn write_config(&mut self) {
        let tables = self.tables.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
        let up = &self.upstream;
        let db_url = format!("host={} port={} user={} password={} dbname={}", up.host(), up.port(), up.user(), up.password(), up.name);
        let supabase = match &self.rest {
            Some(r) => format!("mode = \"rest\"\nurl = \"{}\"\nservice_key = \"{}\"", r.url(), self.service_key),
            None => format!("mode = \"postgres\"\ndb_url = \"{db_url}\""),
        };
        let supabase = format!("{supabase}\nschema = \"{}\"", self.upstream_schema);
        let text = format!(
            r#"[supabase]
{supabase}

[local_postgres]
host = "{lh}"
port = {lp}
database = "{ld}"
user = "{lu}"
password = "{lpw}"

[sync]
interval_seconds = 1
batch_size = {batch_size}
retry_max_attempts = 3
retry_delay_seconds = 1
tables = [{tables}]
slot_name = "{slot}"
publication_name = "p_{ld}"
origin_name = "o_{ld}"
{extra}
health_check_seconds = 1
{logging}
{sections}
"#,
            lh = self.local.host(),
            lp = self.local.port(),
            ld = self.local.name,
            lu = self.local.user(),
            lpw = self.local.password(),
            slot = self.slot,
            extra = self.sync_extra,
            batch_size = self.batch_size,
            logging = if self.sections.contains("[logging]") { "" } else { "\n[logging]\nlevel = \"debug\"" },
            sections = self.sections,
        );
        // Written aside and renamed over: a process starting meanwhile reads
        // the old file or the new one, never a half-written one.
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// A command for the binary with this pair's config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.arg("--config").arg(&self.config_path).args(args);
        c.env("RUST_LOG", "debug").env_remove("CENTROVISION_SYNC_CRASH_AT");
        c.stdin(Stdio::null());
        c
    }

    /// Runs a command to completion (async-friendly: off the runtime thread).
    pub async fn exec(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::task::spawn_blocking(move || c.output().expect("run centrovision-sync")).await.expect("join")
    }

    /// Runs a command and asserts it exits 0.
    pub async fn ok(&self, args: &[&str]) -> Output {
        let out = self.exec(args, &[]).await;
        assert!(
            out.status.success(),
            "centrovision-sync {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
        out
    }

    /// `init`, and the upstream functions: `--upstream` in postgres mode,
    /// run directly on the upstream database in REST mode (as a clinic
    /// pastes `init --print-upstream-sql` into the Supabase SQL editor).
    pub async fn init(&self) {
        self.init_with(&[]).await;
    }

    /// [`init`](Self::init) with extra arguments (e.g. `--upload-existing`).
    pub async fn init_with(&self, extra: &[&str]) {
        let mut args = vec!["init"];
        if self.mode.is_rest() {
            self.install_upstream_sql().await;
        } else {
            args.push("--upstream");
        }
        args.extend_from_slice(extra);
        self.ok(&args).await;
    }

    /// Installs the upstream SQL for this pair's tables directly on the
    /// upstream database, as a clinic pastes `init --print-upstream-sql`
    /// into the Supabase SQL editor. Behind the stand-in it runs as
    /// Supabase's `postgres` does there: a role that is not a superuser
    /// ([`FUNCTION_OWNER`]), owning the app's tables, so it owns the
    /// functions and their SECURITY DEFINER runs with no more than that.
    pub async fn install_upstream_sql(&self) {
        let out = self.ok(&["init", "--print-upstream-sql"]).await;
        let sql = String::from_utf8(out.stdout).expect("UTF-8 SQL");
        let superuser = self.upstream.connect().await;
        let installer = match &self.rest {
            Some(_) => {
                if let Err(e) = give_tables_to_owner(&superuser, &self.upstream_schema).await {
                    panic!("handing the upstream tables to {FUNCTION_OWNER}: {e:?}");
                }
                self.upstream.with_credentials(FUNCTION_OWNER, FUNCTION_OWNER_PASSWORD).connect().await
            }
            None => superuser,
        };
        if let Err(e) = installer.batch_execute(&sql).await {
            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} {}", d.code().code(), d.message()));
            panic!("install upstream SQL: {why}");
        }
    }

    /// A second clinic on the same upstream as `first`: a fresh local
    /// database with the sample schema, its own slot, publication, origin
    /// and config (set `clinic_id` in `sync_extra`).
    pub async fn joining(hint: &str, first: &Pair) -> Pair {
        let local = Cluster::shared().create_database(&format!("{hint}_l")).await;
        Pair::joining_on(local, first).await
    }

    /// [`joining`](Self::joining) with the clinic's database given (e.g. on
    /// a dedicated cluster a test may restart).
    pub async fn joining_on(local: TestDb, first: &Pair) -> Pair {
        local.connect().await.batch_execute(SCHEMA).await.expect("load sample schema");
        let dir = tempfile::tempdir().expect("temp dir");
        let slot = format!("s_{}", local.name);
        let service_key = first.service_key.clone();
        let rest = if first.mode.is_rest() {
            Some(PostgrestStandIn::start_with(&first.upstream, &service_key, standin_options(first.mode, &first.upstream_schema)).await)
        } else {
            None
        };
        let mut p = Pair {
            config_path: dir.path().join("config.toml"),
            local,
            upstream: first.upstream.clone(),
            dir,
            mode: first.mode,
            tables: first.tables.clone(),
            sync_extra: String::new(),
            sections: String::new(),
            slot,
            rest,
            service_key,
            upstream_schema: first.upstream_schema.clone(),
            batch_size: first.batch_size,
        };
        p.write_config();
        p
    }

    /// The stand-in (REST mode only).
    pub fn standin(&self) -> &PostgrestStandIn {
        self.rest.as_ref().expect("REST mode")
    }

    /// `once`.
    pub async fn once(&self) -> Output {
        self.ok(&["once"]).await
    }

    /// Starts `run` in the background, logging to a file in the temp dir.
    /// The process is killed when the guard drops (also when a test fails).
    pub fn spawn_run(&self, env: &[(&str, &str)]) -> Running {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("run.log")).expect("log file");
        let mut c = self.command(&["run"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(log.try_clone().unwrap()).stderr(log);
        Running(c.spawn().expect("spawn run"))
    }

    pub fn run_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }

    /// Every row of `table` on `db`, as JSON, ordered by id.
    pub async fn rows(db: &TestDb, table: &str) -> String {
        let c = db.connect().await;
        let sql = format!("SELECT coalesce(jsonb_agg(to_jsonb(t.*) ORDER BY id), '[]')::text FROM {table} t");
        c.query_one(sql.as_str(), &[]).await.expect("read rows").get(0)
    }

    /// `table` as named on the upstream database (schema-qualified when
    /// `[supabase] schema` is not `public`).
    pub fn upstream_table(&self, table: &str) -> String {
        if self.upstream_schema == "public" { table.to_owned() } else { format!("\"{}\".{table}", self.upstream_schema) }
    }

    /// Asserts every synced table is identical on both sides.
    pub async fn assert_converged(&self) {
        for t in &self.tables {
            let l = Pair::rows(&self.local, t).await;
            let u = Pair::rows(&self.upstream, &self.upstream_table(t)).await;
            if l != u {
                panic!("table {t} differs:\n{}", diff_rows(&l, &u));
            }
        }
    }

    /// Waits until every synced table is identical on both sides.
    pub async fn wait_converged(&self, timeout: Duration) {
        let tables = self.tables.clone();
        wait_for("both sides identical", timeout, || {
            let tables = tables.clone();
            async move {
                for t in &tables {
                    if Pair::rows(&self.local, t).await != Pair::rows(&self.upstream, &self.upstream_table(t)).await {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

/// Supabase's default exposed schemas, plus `schema`; max rows as `mode`
/// says.
fn standin_options(mode: Mode, schema: &str) -> StandInOptions {
    let mut o = StandInOptions::default();
    if !o.schemas.iter().any(|s| s == schema) {
        o.schemas.push(schema.to_owned());
    }
    if mode == Mode::RestClinicSchemaLowMaxRows {
        o.max_rows = LOWERED_MAX_ROWS;
    }
    o
}

/// The single bigint a query returns (counts, mostly).
pub async fn count(db: &TestDb, sql: &str) -> i64 {
    db.connect().await.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Rows only on one side, and rows that differ, by id (first few of each).
pub fn diff_rows(local: &str, upstream: &str) -> String {
    use std::collections::BTreeMap;
    let index = |s: &str| -> BTreeMap<String, serde_json::Value> {
        let v: Vec<serde_json::Value> = serde_json::from_str(s).expect("rows are JSON");
        v.into_iter().map(|r| (r["id"].to_string(), r)).collect()
    };
    let (l, u) = (index(local), index(upstream));
    let mut out = String::new();
    let mut n = 0;
    for (id, row) in &l {
        match u.get(id) {
            None if n < 5 => {
                n += 1;
                out.push_str(&format!("  only local:    {row}\n"));
            }
            Some(other) if other != row && n < 5 => {
                n += 1;
                out.push_str(&format!("  differs: local    {row}\n           upstream {other}\n"));
            }
            _ => {}
        }
    }
    for (id, row) in &u {
        if !l.contains_key(id) && n < 10 {
            n += 1;
            out.push_str(&format!("  only upstream: {row}\n"));
        }
    }
    let only_l = l.keys().filter(|k| !u.contains_key(*k)).count();
    let only_u = u.keys().filter(|k| !l.contains_key(*k)).count();
    let differ = l.iter().filter(|(k, v)| u.get(*k).is_some_and(|o| o != *v)).count();
    if n == 0 && local != upstream {
        // Equal as JSON values, different as text (e.g. numbers such as 2.50 and 2.5).
        let at = local.bytes().zip(upstream.bytes()).take_while(|(a, b)| a == b).count();
        let around = |s: &str| s.get(at.saturating_sub(80)..(at + 80).min(s.len())).unwrap_or("?").to_string();
        out.push_str(&format!(
            "  equal as JSON values but not as text, from byte {at}:\n    local    ...{}...\n    upstream ...{}...\n",
            around(local),
            around(upstream)
        ));
    }
    out.push_str(&format!(
        "  ({} local rows, {} upstream rows; {only_l} only local, {only_u} only upstream, {differ} differ)",
        l.len(),
        u.len()
    ));
    out
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A running `centrovision-sync run`; SIGKILLed on drop.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGKILL and reaps the child.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM and waits for a clean exit.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id() as i32;
    // SAFETY-free: use the kill(1) utility rather than libc.
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    child.wait().expect("wait for run to exit")
}

impl Drop for Pair {
    /// A failing test shows what the service logged. And a finished test's
    /// replication slot and replication origin on the shared cluster go:
    /// that cluster lives as long as the test process, which runs every
    /// integration test, so leftover slots would keep all WAL written after
    /// them, and leftover origins would use up `max_replication_slots`
    /// (origins are tracked in the same slots: SQLSTATE 53400). (Only if
    /// nothing uses them any more; a dedicated cluster goes away with its
    /// slots and origins anyway.)
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.run_log();
            if !log.is_empty() {
                eprintln!("--- last lines of the service log (run.log) ---\n{}", tail(&log, 60));
            }
        }
        if let Some(shared) = Cluster::shared_if_started()
            && shared.port() == self.local.port()
        {
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{}' AND NOT active",
                self.slot.replace('\'', "''")
            );
            let origin = format!(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = 'o_{}'",
                self.local.name.replace('\'', "''")
            );
            // Best effort: the slot or origin may not exist (no `init`) or
            // be busy; psql runs each `-c` whatever the previous one did.
            let _ = shared
                .tool("psql")
                .args(["-X", "-q", "-d", "postgres", "-c", &sql, "-c", &origin])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
