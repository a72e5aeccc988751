//! Real PostgreSQL clusters, started by the tests themselves.
//!
//! Why: the sync engine speaks the logical replication protocol and relies on
//! server behaviour (slots, `wal_level`, crash recovery, auth), which no mock
//! reproduces. So the test process starts its own throw-away clusters with
//! `initdb` + `pg_ctl` from the installed PostgreSQL binaries:
//!
//! - one cluster shared by every test of the process ([`Cluster::shared`]),
//!   started lazily on first use, one database per test
//!   ([`Cluster::create_database`]);
//! - dedicated clusters ([`Cluster::start`]) for tests that stop, crash or
//!   reconfigure the server; they are stopped and removed on `Drop`.
//!
//! Isolation: every cluster lives in its own temp dir, listens only on
//! 127.0.0.1 on a port the kernel just handed out (retried on a bind race), and
//! keeps its Unix socket inside its temp dir, so several test processes (e.g.
//! under nextest) can run at the same time. (nextest runs every test in its
//! own process, so there "one shared cluster per process" means one per test.)
//!
//! Root: PostgreSQL refuses to run as root. When this process is root, every
//! server-side binary is run as the `postgres` OS user (override with
//! `PG_TEST_OS_USER`), and the temp dir is owned by that user.
//!
//! Cleanup: statics are never dropped, so each cluster gets a watchdog `sh`
//! process (as the same OS user as the server, in its own process group so a
//! Ctrl-C doesn't kill it before it has cleaned up). It blocks reading a pipe
//! whose write end only this test process holds (close-on-exec, so no child
//! inherits it). When this process ends for any reason (normal exit, panic,
//! SIGKILL), the kernel closes that end, the watchdog's `read` returns, and it
//! runs `pg_ctl stop -m immediate` and removes the temp dir. Dropping a
//! dedicated cluster closes the pipe itself and waits for the watchdog.
//! Set `PG_TEST_KEEP=1` to keep the temp dirs for inspection.
//!
//! Environment knobs: `PG_BIN_DIR` (binaries to use; default: highest version
//! under /usr/lib/postgresql), `PG_TEST_OS_USER` (when root; default
//! `postgres`), `PG_TEST_TMPDIR` (where temp dirs go), `PG_TEST_KEEP`,
//! `PG_TEST_VERBOSE` (print each cluster's port, dir and start time, and
//! which test waited for one running alone, see `floor`).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
/// Passed to `pg_ctl -t`: how long startup/shutdown may take before we fail.
const PG_CTL_TIMEOUT_SECS: u32 = 60;
/// How many fresh ports to try if another process grabs ours between
/// `free_port()` and the postmaster's bind.
const PORT_ATTEMPTS: usize = 5;
/// Log lines included in panic messages.
const LOG_TAIL_LINES: usize = 40;
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 107;

/// How a cluster is configured. Build with struct-update syntax:
/// `ClusterOptions { wal_level: "replica", ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `wal_level` setting; default `"logical"`.
    pub wal_level: &'static str,
    /// Lines appended to postgresql.conf after the harness's own settings (so
    /// they win), e.g. `"max_slot_wal_keep_size = 1MB"`.
    pub extra_conf: Vec<String>,
    /// Durability for tests that care about it. Default `false`: `fsync=off`
    /// and `full_page_writes=off`, which only lose data on an OS crash or
    /// power loss, never on a postgres crash or `-m immediate` stop, so restart
    /// and crash-recovery tests stay meaningful. `synchronous_commit` stays on
    /// either way.
    pub fsync: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { wal_level: "logical", extra_conf: Vec::new(), fsync: false }
    }
}

/// `pg_ctl stop` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, shut down cleanly (checkpoint).
    Fast,
    /// Kill everything now; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// See [`Cluster::shared`].
static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A running PostgreSQL cluster in a temp dir. `Send + Sync`.
pub struct Cluster {
    bin_dir: PathBuf,
    /// The temp dir: holds `data/` and the Unix socket.
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    password: String,
    server_version_num: u32,
    /// `Cluster::shared()` refuses stop/restart: other tests are using it.
    shared: bool,
    /// Serialises pg_ctl invocations on this cluster.
    ctl: Mutex<()>,
    /// Held for its `Drop`, which stops the server and removes `root`;
    /// declared last so it is dropped last.
    _watchdog: Watchdog,
}

impl Cluster {
    /// The cluster shared by all tests of this test process, started on first
    /// use. Don't stop or reconfigure it; use [`Cluster::start`] for that.
    #[track_caller]
    pub fn shared() -> &'static Cluster {
        super::floor::join();
        let started = SHARED.get_or_init(|| {
            Cluster::try_start(ClusterOptions::default()).map(|mut cluster| {
                cluster.shared = true;
                cluster
            })
        });
        match started {
            Ok(cluster) => cluster,
            // Every test of the process fails fast with the original reason
            // instead of each one retrying a start that can't work.
            Err(reason) => panic!("the shared test cluster failed to start:\n{reason}"),
        }
    }

    /// The shared cluster, if a test has started it already.
    pub fn shared_if_started() -> Option<&'static Cluster> {
        SHARED.get().and_then(|started| started.as_ref().ok())
    }

    /// A dedicated cluster, stopped and removed on `Drop` (or by the watchdog
    /// if the process dies first). Blocks while `initdb` and `pg_ctl start`
    /// run: ~0.5 s on this machine.
    #[track_caller]
    pub fn start(opts: ClusterOptions) -> Cluster {
        super::floor::join();
        match Cluster::try_start(opts) {
            Ok(cluster) => cluster,
            Err(reason) => panic!("{reason}"),
        }
    }

    fn try_start(opts: ClusterOptions) -> Result<Cluster, String> {
        let started = Instant::now();
        let bin_dir = bin_dir()?.to_path_buf();
        let keep = std::env::var_os("PG_TEST_KEEP").is_some_and(|v| v != "0" && !v.is_empty());

        let base = temp_base()?;
        enough_disk(&base)?;
        let root = tempfile::Builder::new()
            .prefix("cvsync-pg-")
            .tempdir_in(&base)
            .map_err(|e| format!("cannot create a temp dir for the test cluster: {e}"))?
            .keep();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", root.display()))?;
        give_to_server_user(&root)?;
        let data_dir = root.join("data");
        let log_file = data_dir.join("server.log");

        // From here on, a failed start (Err return or panic) drops the
        // watchdog, which removes `root`.
        let watchdog = Watchdog::spawn(&bin_dir, &data_dir, &root, keep)?;
        if keep {
            eprintln!("[test cluster] PG_TEST_KEEP set: keeping {}", root.display());
        }

        let password = random_password();
        let pwfile = root.join("pwfile");
        write_private_file(&pwfile, &password)?;
        let initdb = pg_command(bin_dir.join("initdb"), &root)
            .arg("--pgdata")
            .arg(&data_dir)
            .args(["--username", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
            .output();
        let _ = fs::remove_file(&pwfile);
        check_output("initdb", initdb)?;

        let base_conf = fs::read_to_string(data_dir.join("postgresql.conf"))
            .map_err(|e| format!("reading the initdb-generated postgresql.conf: {e}"))?;

        let mut cluster = Cluster {
            bin_dir,
            root,
            data_dir,
            log_file,
            port: 0,
            password,
            server_version_num: 0,
            shared: false,
            ctl: Mutex::new(()),
            _watchdog: watchdog,
        };
        cluster.server_version_num = cluster.read_server_version()?;

        // free_port() releases the port before the postmaster binds it, so
        // another process can win the race; then we simply try another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_port();
            cluster.write_conf(&base_conf, &opts)?;
            let log_len_before = fs::metadata(&cluster.log_file).map(|m| m.len()).unwrap_or(0);
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err(reason) => {
                    let new_log = read_log_from(&cluster.log_file, log_len_before);
                    let bind_race = ["could not bind", "Address already in use", "could not create any TCP/IP sockets"]
                        .iter()
                        .any(|needle| new_log.contains(needle));
                    if !(bind_race && attempt < PORT_ATTEMPTS) {
                        return Err(reason);
                    }
                }
            }
        }
        if std::env::var_os("PG_TEST_VERBOSE").is_some() {
            eprintln!(
                "[test cluster] PostgreSQL {} on {HOST}:{} in {} (started in {:.2?})",
                cluster.server_version_num,
                cluster.port,
                cluster.root.display(),
                started.elapsed()
            );
        }
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &'static str {
        SUPERUSER
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`pg_ctl -l`), inside the data dir.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The postmaster's pid (first line of `postmaster.pid`), if running. To
    /// kill it, prefer [`kill_postmaster`](Self::kill_postmaster).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Chaos: SIGKILL the postmaster and wait until it is dead (gone or an
    /// unreaped zombie). Its backends notice and exit on their own; the next
    /// [`start_again`](Self::start_again) runs crash recovery. Use this rather
    /// than a bare `kill -9`: a postmaster that is still exiting looks alive,
    /// and `start_again` would then refuse to touch its lock file.
    #[track_caller]
    pub fn kill_postmaster(&self) {
        self.refuse_if_shared("kill_postmaster");
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let pid = self.postmaster_pid().expect("kill_postmaster: the cluster is not running");
        let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
        if let Err(reason) = check_output(&format!("kill -KILL {pid}"), killed) {
            panic!("{reason}");
        }
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_TIMEOUT_SECS.into());
        while !matches!(process_state(pid), None | Some('Z' | 'X')) {
            assert!(Instant::now() < deadline, "postmaster {pid} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// e.g. `150018` for 15.18, as in `SHOW server_version_num`.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// `pg_ctl stop -m <mode>`, waiting until the server is gone. A server
    /// that is already down (stopped, or its postmaster killed) is left as is.
    #[track_caller]
    pub fn stop(&self, mode: StopMode) {
        self.refuse_if_shared("stop");
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(reason) = self.clear_stale_lock_file() {
            panic!("{reason}\n{}", self.log_tail_section());
        }
        if !self.data_dir.join("postmaster.pid").exists() {
            // Already down (e.g. a chaos test killed it): stopping is done.
            return;
        }
        let out = pg_command(self.bin_dir.join("pg_ctl"), &self.root)
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode.as_arg(), "-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()])
            .output();
        if let Err(reason) = check_output("pg_ctl stop", out) {
            panic!("{reason}\n{}", self.log_tail_section());
        }
    }

    /// Start again after [`stop`](Self::stop): same data dir, same port.
    #[track_caller]
    pub fn start_again(&self) {
        self.refuse_if_shared("start_again");
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(reason) = self.clear_stale_lock_file().and_then(|()| self.pg_ctl_start()) {
            panic!("{reason}");
        }
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    #[track_caller]
    pub fn restart(&self, mode: StopMode) {
        self.stop(mode);
        self.start_again();
    }

    /// Connect as the superuser to an existing database (e.g. `"postgres"`).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        self.db_handle(db).connect().await
    }

    /// A handle for an existing database (no CREATE DATABASE).
    pub fn db_handle(&self, name: &str) -> TestDb {
        TestDb {
            name: name.to_owned(),
            host: HOST,
            port: self.port,
            user: SUPERUSER.to_owned(),
            password: self.password.clone(),
            log_file: self.log_file.clone(),
        }
    }

    /// `CREATE DATABASE` with a unique name derived from `hint` (sanitised,
    /// lowercased, plus pid and a counter), e.g. `"slot survives restart"` ->
    /// `slot_survives_restart_4242_7`.
    pub async fn create_database(&self, hint: &str) -> TestDb {
        let name = unique_db_name(hint);
        // FILE_COPY (PG 15+; older versions only do that) writes ~1 kB of
        // WAL where the default WAL_LOG writes the whole template (~4 MB):
        // noise for WAL- or slot-size tests sharing the cluster. Same speed.
        let strategy = if self.server_version_num >= 150_000 { " STRATEGY = FILE_COPY" } else { "" };
        let admin = self.connect("postgres").await;
        if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {}{strategy}", quote_ident(&name))).await {
            panic!(
                "CREATE DATABASE {name} failed on test cluster {HOST}:{}: {}\n{}",
                self.port,
                describe_pg_error(&e),
                self.log_tail_section()
            );
        }
        self.db_handle(&name)
    }

    /// A command for a client tool from [`bin_dir`](Self::bin_dir) (psql,
    /// pgbench, pg_recvlogical, ...) with PGHOST/PGPORT/PGUSER/PGPASSWORD set
    /// for this cluster. Runs as the current OS user (clients may be root).
    pub fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(name));
        scrub_pg_env(&mut cmd);
        cmd.env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }

    fn log_tail_section(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} (removed at exit unless PG_TEST_KEEP=1) ---\n{}",
            self.log_file.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    #[track_caller]
    fn refuse_if_shared(&self, what: &str) {
        if self.shared {
            panic!(
                "Cluster::shared().{what}() would break every other test in this process; \
                 use Cluster::start(ClusterOptions::default()) for a dedicated cluster"
            );
        }
    }

    /// After a `kill -9` of the postmaster, its pid stays a zombie until the
    /// process reaper collects it (PID 1 here reaps only every ~2 s; in a
    /// container whose PID 1 is not an init, never). Both postgres and
    /// `pg_ctl` take that zombie for a live postmaster: start fails with
    /// "lock file already exists", stop waits until its timeout. A zombie is
    /// dead, so once the old backends (processes whose cwd is the data dir)
    /// are gone too, `postmaster.pid` and the socket lock file are stale and
    /// are removed. postgres' own
    /// check that no process is still attached to the old shared memory stays
    /// in force.
    fn clear_stale_lock_file(&self) -> Result<(), String> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        if process_state(pid) != Some('Z') {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_TIMEOUT_SECS.into());
        loop {
            let survivors = processes_in_dir(&self.data_dir);
            if survivors.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the postmaster (pid {pid}) is dead but processes {survivors:?} still run in {}",
                    self.data_dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The socket lock file names the dead pid too.
        let socket_lock = self.root.join(format!(".s.PGSQL.{}.lock", self.port));
        for lock in [self.data_dir.join("postmaster.pid"), socket_lock] {
            match fs::remove_file(&lock) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing stale {}: {e}", lock.display())),
            }
        }
        Ok(())
    }

    /// Our settings go after initdb's postgresql.conf (later lines win), then
    /// the caller's extra lines.
    fn write_conf(&self, base_conf: &str, opts: &ClusterOptions) -> Result<(), String> {
        let socket = self.root.join(format!(".s.PGSQL.{}", self.port));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!("socket path {} is too long for a Unix socket; set PG_TEST_TMPDIR to a shorter dir", socket.display()));
        }
        let durable = if opts.fsync { "on" } else { "off" };
        let mut conf = base_conf.to_owned();
        let _ = write!(
            conf,
            "\n# ---- added by tests/it/support/cluster.rs ----\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = {socket_dir}\n\
             wal_level = {wal_level}\n\
             max_replication_slots = 1024\n\
             max_wal_senders = 64\n\
             max_connections = 300\n\
             fsync = {durable}\n\
             full_page_writes = {durable}\n\
             synchronous_commit = on\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_min_messages = warning\n\
             log_checkpoints = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_timezone = 'UTC'\n",
            port = self.port,
            socket_dir = quote_conf(&self.root.to_string_lossy()),
            wal_level = opts.wal_level,
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.data_dir.join("postgresql.conf");
        fs::write(&path, conf).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// `pg_ctl start -w`; on failure the error carries pg_ctl's output and the
    /// log tail.
    fn pg_ctl_start(&self) -> Result<(), String> {
        // -l: the postmaster's stdout/stderr go to the log file, so it never
        // holds our output pipes (which would make `.output()` hang).
        let out = pg_command(self.bin_dir.join("pg_ctl"), &self.root)
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()])
            .output();
        check_output(&format!("pg_ctl start (port {})", self.port), out)
            .map(drop)
            .map_err(|reason| format!("test cluster did not start: {reason}\n{}", self.log_tail_section()))
    }

    /// From `postgres -V`, e.g. "postgres (PostgreSQL) 15.18 (Debian ...)".
    fn read_server_version(&self) -> Result<u32, String> {
        let out = pg_command(self.bin_dir.join("postgres"), &self.root).arg("-V").output();
        let out = check_output("postgres -V", out)?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version_num(&text).ok_or_else(|| format!("cannot parse the server version from {text:?}"))
    }
}

/// A database created for one test, plus the credentials to reach it.
#[derive(Clone, Debug)]
pub struct TestDb {
    pub name: String,
    host: &'static str,
    port: u16,
    user: String,
    password: String,
    log_file: PathBuf,
}

impl TestDb {
    /// The same parameters as a tokio-postgres config (10 s connect timeout).
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.name)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// The same database reached with other credentials (a role the test
    /// created, or a wrong password).
    pub fn with_credentials(&self, user: &str, password: &str) -> TestDb {
        TestDb { user: user.to_owned(), password: password.to_owned(), ..self.clone() }
    }

    /// The service's journal database beside this one (`[local_postgres]
    /// journal_database` left at its default, `<database>_journal`), which
    /// `init` creates: where `_sync_pending` and `_sync_capture` live.
    pub fn journal(&self) -> TestDb {
        TestDb { name: format!("{}_journal", self.name), ..self.clone() }
    }

    /// Connect and spawn the connection task on the current tokio runtime.
    /// Panics with the server's error and the log tail on failure.
    pub async fn connect(&self) -> tokio_postgres::Client {
        match self.try_connect().await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot connect to test database {:?} at {}:{} as {}: {}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
                self.name,
                self.host,
                self.port,
                self.user,
                describe_pg_error(&e),
                self.log_file.display(),
                log_tail(&self.log_file, LOG_TAIL_LINES)
            ),
        }
    }

    /// Like [`connect`](Self::connect) but returns the error (for tests about
    /// refused connections).
    pub async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Shown only for failing tests (captured output); expected
                // after restarts and terminated backends.
                eprintln!("[test db {name}] connection ended: {}", describe_pg_error(&e));
            }
        });
        Ok(client)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        self.host
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

/// A port that was free on 127.0.0.1 a moment ago (bind port 0, read, drop).
/// Racy by nature: whoever binds it must be ready to retry.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local_addr of a bound listener").port()
}

/// Stops the server and removes the temp dir when this process ends (pipe
/// EOF) or when dropped. See the module docs.
struct Watchdog {
    child: Child,
    /// Write end of the watchdog's stdin; closing it is the "clean up now" signal.
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Positional args: $1 bin dir, $2 data dir, $3 temp dir, $4 keep (1/0).
    const SCRIPT: &'static str = r#"
trap '' INT HUP
read _never_written
pid=$(sed -n 1p "$2/postmaster.pid" 2>/dev/null)
# A killed postmaster left as a zombie would make pg_ctl wait its full -t.
if [ -z "$pid" ] || ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; then
    "$1/pg_ctl" stop -D "$2" -m immediate -w -t 30 >/dev/null 2>&1
fi
[ "$4" = 1 ] || rm -rf "$3"
"#;

    fn spawn(bin_dir: &Path, data_dir: &Path, root: &Path, keep: bool) -> Result<Watchdog, String> {
        let mut child = pg_command("/bin/sh", root)
            .arg("-c")
            .arg(Self::SCRIPT)
            .arg("cvsync-pg-watchdog")
            .arg(bin_dir)
            .arg(data_dir)
            .arg(root)
            .arg(if keep { "1" } else { "0" })
            .stdin(Stdio::piped())
            // Not the test process's stdout/stderr: a test runner reading
            // them to EOF must not wait for the watchdog.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C on the test run must not kill the
            // watchdog before it has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot spawn the cluster watchdog (/bin/sh): {e}"))?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// Who runs the server-side binaries.
#[derive(Clone, Copy, Debug)]
enum ServerUser {
    /// Not root: run them as ourselves.
    Me,
    /// Root: run them as this uid/gid (PostgreSQL refuses to run as root).
    Other { uid: u32, gid: u32 },
}

fn server_user() -> Result<ServerUser, String> {
    static USER: OnceLock<Result<ServerUser, String>> = OnceLock::new();
    USER.get_or_init(|| {
        // /proc/self is owned by the process's effective uid.
        let euid = match fs::metadata("/proc/self") {
            Ok(meta) => meta.uid(),
            Err(_) => id_number(&["-u"])?,
        };
        if euid != 0 {
            return Ok(ServerUser::Me);
        }
        let name = std::env::var("PG_TEST_OS_USER").unwrap_or_else(|_| "postgres".to_owned());
        let lookup = |flag: &str| {
            id_number(&[flag, &name]).map_err(|e| {
                format!(
                    "running as root, and PostgreSQL refuses to run as root, but OS user {name:?} \
                     can't be used ({e}); create it (useradd --system {name}) or set PG_TEST_OS_USER"
                )
            })
        };
        Ok(ServerUser::Other { uid: lookup("-u")?, gid: lookup("-g")? })
    })
    .clone()
}

fn id_number(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id").args(args).output();
    let out = check_output(&format!("id {}", args.join(" ")), out)?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|e| format!("`id {}` printed {text:?}: {e}", args.join(" ")))
}

/// A command for a server-side program (initdb, pg_ctl, postgres, the
/// watchdog shell), run as the server user with a clean PG* environment.
fn pg_command(program: impl AsRef<OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    // The server user may not be able to enter the test's cwd (e.g. /root/...),
    // which makes initdb/pg_ctl complain.
    cmd.current_dir(cwd);
    cmd.stdin(Stdio::null());
    scrub_pg_env(&mut cmd);
    // English messages, so bind-failure detection and log reading work.
    cmd.env("LC_ALL", "C").env("LANG", "C");
    // `server_user()` was resolved (and its error reported) before any
    // pg_command is built; see `give_to_server_user` in `try_start`.
    if let Ok(ServerUser::Other { uid, gid }) = server_user() {
        // std also drops root's supplementary groups (setgroups(0)) here.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// libpq environment variables that would override what we pass explicitly
/// (PGPORT, for one, is the postmaster's default port).
fn scrub_pg_env(cmd: &mut Command) {
    for var in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGHOSTADDR",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSYSCONFDIR",
        "PGSSLMODE",
        "PGAPPNAME",
        "PGTZ",
        "PGCLIENTENCODING",
        "PGTARGETSESSIONATTRS",
    ] {
        cmd.env_remove(var);
    }
}

/// chown to the server user when we are root (no-op otherwise).
fn give_to_server_user(path: &Path) -> Result<(), String> {
    if let ServerUser::Other { uid, gid } = server_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {} to uid {uid}: {e}", path.display()))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, contents: &str) -> Result<(), String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(|e| format!("writing {}: {e}", path.display()))?;
    give_to_server_user(path)
}

/// Where temp dirs go. As root, the server user must be able to reach the
/// dir and (for the watchdog's `rm -rf`) write in its parent, so a private
/// TMPDIR falls back to /tmp.
/// Below this much free space where the clusters go, a run fails with
/// "No space left on device" in whichever tests happen to write last; say so
/// up front instead, once per process.
const MIN_FREE_BYTES: u64 = 1 << 30;

fn enough_disk(base: &Path) -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // `df -Pk`: POSIX output, 1024-byte blocks; "Available" is column 4.
            let out = Command::new("df").arg("-Pk").arg(base).output();
            let Ok(out) = out else { return Ok(()) };
            let text = String::from_utf8_lossy(&out.stdout);
            let free_kb = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse::<u64>().ok());
            match free_kb {
                Some(kb) if kb * 1024 < MIN_FREE_BYTES => Err(format!(
                    "only {} MiB free in {}: the test clusters need at least {} MiB; free some space there, \
                     or point PG_TEST_TMPDIR at a roomier directory",
                    kb / 1024,
                    base.display(),
                    MIN_FREE_BYTES >> 20
                )),
                _ => Ok(()),
            }
        })
        .clone()
}

fn temp_base() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_TEST_TMPDIR") {
        return Ok(PathBuf::from(dir));
    }
    let dir = std::env::temp_dir();
    if let ServerUser::Other { .. } = server_user()? {
        let usable = fs::metadata(&dir).is_ok_and(|m| m.permissions().mode() & 0o003 == 0o003)
            && dir.ancestors().skip(1).all(|a| fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
        if !usable {
            return Ok(PathBuf::from("/tmp"));
        }
    }
    Ok(dir)
}

/// `PG_BIN_DIR`, else the highest version under /usr/lib/postgresql, else
/// `pg_config --bindir` from PATH.
fn bin_dir() -> Result<&'static Path, String> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN_DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
            let dir = PathBuf::from(dir);
            return if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                Ok(dir)
            } else {
                Err(format!("PG_BIN_DIR={} has no initdb/pg_ctl", dir.display()))
            };
        }
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(version) = name.split('.').map(str::parse::<u32>).collect::<Result<Vec<_>, _>>() else {
                    continue;
                };
                let bin = entry.path().join("bin");
                if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(v, _)| version > *v) {
                    best = Some((version, bin));
                }
            }
        }
        if let Some((_, bin)) = best {
            return Ok(bin);
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
        Err("no PostgreSQL server binaries found: install postgresql (initdb under \
             /usr/lib/postgresql/<version>/bin) or set PG_BIN_DIR"
            .to_owned())
    });
    found.as_deref().map_err(Clone::clone)
}

/// The state letter from /proc/<pid>/stat (`R`, `S`, `Z`, ...); None if gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may contain spaces and parens.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Live processes whose working directory is `dir` (postgres processes run
/// in their data dir). Processes we may not inspect are skipped.
fn processes_in_dir(dir: &Path) -> Vec<u32> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| !matches!(process_state(*pid), Some('Z' | 'X') | None))
        .collect()
}

fn check_output(what: &str, result: std::io::Result<Output>) -> Result<Output, String> {
    let out = result.map_err(|e| format!("{what}: cannot run it: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    ))
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn read_log_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// "postgres (PostgreSQL) 15.18 (Debian ...)" -> 150018; "9.6.24" -> 90624;
/// "17beta1" -> 170000.
fn parse_version_num(text: &str) -> Option<u32> {
    let after = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let version: String = after.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let parts: Vec<u32> = version.split('.').filter(|p| !p.is_empty()).map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, rest @ ..] if *major >= 10 => Some(major * 10000 + rest.first().copied().unwrap_or(0)),
        [major, minor, rest @ ..] => Some(major * 10000 + minor * 100 + rest.first().copied().unwrap_or(0)),
        _ => None,
    }
}

fn random_password() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng().sample_iter(Alphanumeric).take(24).map(char::from).collect()
}

fn unique_db_name(hint: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut base = String::new();
    for c in hint.chars() {
        let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' };
        if !(c == '_' && (base.is_empty() || base.ends_with('_'))) {
            base.push(c);
        }
    }
    while base.ends_with('_') {
        base.pop();
    }
    if base.is_empty() {
        base.push_str("db");
    }
    if base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert_str(0, "t_");
    }
    let suffix = format!("_{}_{n}", std::process::id());
    // Identifiers are at most 63 bytes, and the service's journal database
    // is named `<name>_journal`; base is ASCII so any cut is valid.
    base.truncate(63 - "_journal".len() - suffix.len());
    base + &suffix
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A postgresql.conf string literal.
fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// tokio-postgres' Display for server errors is just "db error"; include
/// SQLSTATE, message, detail and the source chain.
fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(text, " (detail: {detail})");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(text, ": {inner}");
        source = inner.source();
    }
    text
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<TestDb>();
};
