//! `config.toml`: the spec's sections and keys, plus what WAL capture needs.
//!
//! Loading is strict so that a clinic's IT person learns about a typo the
//! first time the service starts, not when data goes missing: unknown keys,
//! missing required keys and bad values are all errors that name the key
//! (the CLI exits with code 2 on them). Secrets may come from environment
//! variables instead of the file and are wrapped in [`Secret`], whose
//! `Debug`/`Display` never print the value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod db;

pub use db::{LocalDbs, connect_journal, connect_local};

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "CENTROVISION_SYNC_CONFIG";
/// Environment overrides for the secrets (they win over the file).
pub const SERVICE_KEY_ENV: &str = "CENTROVISION_SYNC_SERVICE_KEY";
pub const DB_URL_ENV: &str = "CENTROVISION_SYNC_DB_URL";
pub const LOCAL_PASSWORD_ENV: &str = "CENTROVISION_SYNC_LOCAL_PASSWORD";
pub const WEBHOOK_URL_ENV: &str = "CENTROVISION_SYNC_WEBHOOK_URL";
pub const HTTP_TOKEN_ENV: &str = "CENTROVISION_SYNC_HTTP_TOKEN";

/// The CentroVision tables synced when `[sync] tables` is absent.
pub const DEFAULT_TABLES: [&str; 23] = [
    "branches",
    "rooms",
    "profiles",
    "patients",
    "appointments",
    "services",
    "service_categories",
    "invoices",
    "invoice_items",
    "payments",
    "cash_closures",
    "encounters",
    "prescriptions",
    "prescription_items",
    "referrals",
    "inventory_items",
    "inventory_categories",
    "inventory_movements",
    "studies",
    "study_files",
    "crm_leads",
    "crm_pipelines",
    "crm_pipeline_stages",
];

/// A value that must never reach a log line, an error message or `status`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is handed to a connection.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Supabase's HTTP API (PostgREST) with the service-role key.
    Rest,
    /// A direct PostgreSQL connection to the Supabase database (`db_url`).
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub supabase: Supabase,
    pub local_postgres: LocalPostgres,
    pub sync: Sync,
    pub logging: Logging,
    pub alerts: Alerts,
    pub http: Http,
    pub audit: Audit,
    /// `[storage]`: the study-files mirror (off when the section is absent).
    pub storage: Option<Storage>,
    /// Where the config was read from (for messages), if from a file.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Supabase {
    pub url: Option<String>,
    pub service_key: Secret,
    pub mode: UpstreamMode,
    pub db_url: Secret,
    /// Schema of the synced tables upstream.
    pub schema: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// CA certificate(s) (PEM) for the direct connection, e.g. Supabase's
    /// `prod-ca-2021.crt`; Mozilla's roots when absent.
    pub db_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LocalPostgres {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// Schema of the synced tables locally.
    pub schema: String,
    /// The sibling database on the same cluster that holds the up-path
    /// journal (`_sync_pending`, `_sync_capture`, `_sync_epoch`): outside
    /// the decoded database, so the walsender skips the journal's own WAL.
    pub journal_database: String,
}

#[derive(Debug, Clone)]
pub struct Sync {
    pub interval_seconds: u64,
    pub batch_size: usize,
    pub retry_max_attempts: u32,
    pub retry_delay_seconds: u64,
    pub tables: Vec<String>,
    pub slot_name: String,
    pub publication_name: String,
    /// Replication origin that tags the down path's local writes.
    pub origin_name: String,
    /// How far behind the watermark the poller re-reads, to catch rows that
    /// committed late with an older `updated_at`.
    pub overlap_seconds: u64,
    pub journal_retention_hours: u64,
    /// How often upstream reachability is checked.
    pub health_check_seconds: u64,
    /// How long `_sync_log` rows are kept.
    pub log_retention_days: u64,
    /// This clinic's writer id upstream: every change it sends carries it,
    /// and the change feed leaves out what it wrote itself.
    pub clinic_id: String,
    /// A conflict stamp further than this ahead of the server's clock counts
    /// as the server's now (written upstream by `init --upstream`).
    pub max_clock_skew_seconds: u64,
    /// How long upstream keeps tombstones of deleted rows (`init --upstream`).
    pub tombstone_retention_days: u64,
    /// How long upstream keeps the conflict log (`init --upstream`).
    pub conflict_retention_days: u64,
    /// Branch scoping (`[sync] branch_ids`, `[sync.table.<name>] scope`):
    /// see [`crate::scope`].
    pub branches: BranchScope,
}

/// `[sync] branch_ids` and the per-table scope overrides. `branch_ids`
/// None: unscoped (every branch's rows are synced).
#[derive(Debug, Clone, Default)]
pub struct BranchScope {
    pub branch_ids: Option<Vec<String>>,
    /// `[sync.table.<name>] scope`, by table.
    pub overrides: std::collections::BTreeMap<String, ScopeSetting>,
}

/// A table's scope as written in `[sync.table.<name>] scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeSetting {
    /// `"branch"`: the table's own `branch_id` column.
    Branch,
    /// `"shared"`: every branch's rows (catalogues).
    Shared,
    /// `"via:<fk column>"`: the branch of the parent that column refers to.
    Via(String),
}

#[derive(Debug, Clone)]
pub struct Alerts {
    /// Alert after this many consecutive failures of one task.
    pub consecutive_errors: u32,
    /// Optional webhook receiving a JSON body per alert.
    pub webhook_url: Secret,
    /// Alert when more journal rows than this wait to be pushed.
    pub max_backlog_rows: i64,
    /// Alert when the oldest unsynced change is older than this.
    pub max_pending_age_minutes: u64,
    /// Alert when the slot retains more WAL than this.
    pub max_slot_lag_mb: u64,
}

#[derive(Debug, Clone)]
pub struct Audit {
    /// Local time (hour, minute) of the daily verify inside `run`.
    pub daily_at: Option<(u32, u32)>,
}

/// `[storage]`: Supabase Storage objects named by `study_files` rows,
/// mirrored into a local directory both ways ([`crate::storage`]).
#[derive(Debug, Clone)]
pub struct Storage {
    /// Buckets mirrored; the first one is where new local files go up.
    pub buckets: Vec<String>,
    /// The mirror: an object `scans/a.bin` of bucket `b` is
    /// `<local_dir>/b/scans/a.bin`.
    pub local_dir: PathBuf,
    /// Storage API base, e.g. `https://<ref>.supabase.co/storage/v1`
    /// (default: `[supabase] url` + `/storage/v1`).
    pub url: String,
    /// The table naming the objects and its column holding the object path.
    pub table: String,
    pub path_column: String,
    /// Objects larger than this are not mirrored (reported instead).
    pub max_file_bytes: u64,
    /// Bytes per second for transfers (0: unlimited).
    pub bandwidth_bytes_per_second: u64,
    /// Days a mirrored file stays after its row is deleted (0: at once).
    pub retention_days: u64,
    /// Alert when a file waits longer than this to move.
    pub alert_after_minutes: u64,
}

#[derive(Debug, Clone)]
pub struct Http {
    /// Address for the status page, /health, /status, /metrics and POST
    /// /sync (off when None).
    pub listen: Option<std::net::SocketAddr>,
    /// Language of the status page.
    pub language: Language,
    /// Required on every request when set (`Authorization: Bearer` or the
    /// login cookie); required to listen beyond loopback.
    pub token: Secret,
}

/// The status page's language (`[http] language`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Spanish, the default: the clinics' staff read it.
    #[default]
    Es,
    En,
}

#[derive(Debug, Clone)]
pub struct Logging {
    pub level: String,
    pub file: Option<PathBuf>,
    /// May be fractional (e.g. 0.5).
    pub max_size_mb: f64,
    pub max_files: usize,
}

/// Why the configuration could not be used. Always names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read config file {path}: {source}. Pass --config PATH or set {CONFIG_ENV}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("Config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("Config key {key} {problem}")]
    Invalid { key: &'static str, problem: String },
    /// Like `Invalid`, for keys whose name depends on the file
    /// (`[sync.table.<name>] scope`).
    #[error("Config key {key} {problem}")]
    InvalidNamed { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { key, problem: problem.into() }
    }
}

// ---- raw file shape -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    supabase: Option<RawSupabase>,
    local_postgres: Option<RawLocal>,
    sync: Option<RawSync>,
    logging: Option<RawLogging>,
    alerts: Option<RawAlerts>,
    http: Option<RawHttp>,
    audit: Option<RawAudit>,
    storage: Option<RawStorage>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    buckets: Option<Vec<String>>,
    local_dir: Option<PathBuf>,
    url: Option<String>,
    table: Option<String>,
    path_column: Option<String>,
    max_file_mb: Option<u64>,
    bandwidth_limit_mbps: Option<f64>,
    retention_days: Option<u64>,
    alert_after_minutes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    daily_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    consecutive_errors: Option<u32>,
    webhook_url: Option<Secret>,
    max_backlog_rows: Option<i64>,
    max_pending_age_minutes: Option<u64>,
    max_slot_lag_mb: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    language: Option<Language>,
    token: Option<Secret>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSupabase {
    url: Option<String>,
    service_key: Option<Secret>,
    mode: Option<UpstreamMode>,
    db_url: Option<Secret>,
    schema: Option<String>,
    request_timeout_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    db_ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    user: Option<String>,
    password: Option<Secret>,
    schema: Option<String>,
    journal_database: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSync {
    interval_seconds: Option<u64>,
    batch_size: Option<usize>,
    retry_max_attempts: Option<u32>,
    retry_delay_seconds: Option<u64>,
    tables: Option<Vec<String>>,
    slot_name: Option<String>,
    publication_name: Option<String>,
    origin_name: Option<String>,
    overlap_seconds: Option<u64>,
    journal_retention_hours: Option<u64>,
    health_check_seconds: Option<u64>,
    log_retention_days: Option<u64>,
    clinic_id: Option<String>,
    max_clock_skew_seconds: Option<u64>,
    tombstone_retention_days: Option<u64>,
    conflict_retention_days: Option<u64>,
    branch_ids: Option<Vec<String>>,
    /// `[sync.table.<name>]` sections.
    table: Option<std::collections::BTreeMap<String, RawTable>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTable {
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<String>,
    file: Option<PathBuf>,
    max_size_mb: Option<f64>,
    max_files: Option<usize>,
}

/// Where to read the config: `--config`, else `$CENTROVISION_SYNC_CONFIG`,
/// else `./config.toml`.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("config.toml"),
    }
}

impl Config {
    /// Reads and validates the file, applying secret overrides from the
    /// process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = Config::from_toml(&text, &path.display().to_string(), env)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates config text; `env` looks up secret overrides.
    pub fn from_toml(text: &str, origin: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            // toml's message names the key and line; it never includes
            // secret values because they are not echoed for type errors of
            // strings, but trim it to the first paragraph to be safe.
            message: redact_toml_message(&e),
        })?;

        let rs = raw.supabase.unwrap_or_default();
        let mode = rs.mode.unwrap_or(UpstreamMode::Rest);
        let service_key = env(SERVICE_KEY_ENV).map(Secret::new).or(rs.service_key).unwrap_or_default();
        let db_url = env(DB_URL_ENV).map(Secret::new).or(rs.db_url).unwrap_or_default();
        let url = rs.url.filter(|u| !u.trim().is_empty());
        match mode {
            UpstreamMode::Rest => {
                let Some(u) = &url else {
                    return Err(ConfigError::invalid(
                        "[supabase] url",
                        "is required when mode = \"rest\" (e.g. https://<project>.supabase.co)",
                    ));
                };
                validate_rest_url(u)?;
                if service_key.is_empty() {
                    return Err(ConfigError::invalid(
                        "[supabase] service_key",
                        format!("is required when mode = \"rest\" (or set {SERVICE_KEY_ENV}); use the service_role key, not the anon key"),
                    ));
                }
            }
            UpstreamMode::Postgres => {
                if db_url.is_empty() {
                    return Err(ConfigError::invalid(
                        "[supabase] db_url",
                        format!("is required when mode = \"postgres\" (or set {DB_URL_ENV})"),
                    ));
                }
                match normalize_db_url(db_url.expose()).parse::<tokio_postgres::Config>() {
                    Err(e) => {
                        return Err(ConfigError::invalid(
                            "[supabase] db_url",
                            format!("is not a valid PostgreSQL connection string ({})", scrub(&e.to_string(), db_url.expose())),
                        ));
                    }
                    // Supabase's transaction pooler hands each transaction to
                    // any backend: no session state (prepared statements, SET)
                    // survives between them, and what the service sets for
                    // itself could reach another client's transactions.
                    Ok(c) if c.get_ports().contains(&TRANSACTION_POOLER_PORT) => {
                        return Err(ConfigError::invalid(
                            "[supabase] db_url",
                            format!(
                                "points at port {TRANSACTION_POOLER_PORT}, Supabase's transaction pooler, which keeps no session; use the \
                                 direct connection (db.<ref>.supabase.co:5432) or the session pooler (<region>.pooler.supabase.com:5432)"
                            ),
                        ));
                    }
                    Ok(_) => {}
                }
                if let Some(u) = &url {
                    validate_rest_url(u)?;
                }
            }
        }
        let supabase = Supabase {
            url,
            service_key,
            mode,
            db_url,
            schema: ident("[supabase] schema", rs.schema.unwrap_or_else(|| "public".into()))?,
            request_timeout: Duration::from_secs(positive("[supabase] request_timeout_seconds", rs.request_timeout_seconds.unwrap_or(30))?),
            connect_timeout: Duration::from_secs(positive("[supabase] connect_timeout_seconds", rs.connect_timeout_seconds.unwrap_or(10))?),
            db_ca_file: match rs.db_ca_file.filter(|p| !p.as_os_str().is_empty()) {
                Some(p) if !p.is_file() => {
                    return Err(ConfigError::invalid("[supabase] db_ca_file", format!("{} does not exist or is not a file", p.display())));
                }
                p => p,
            },
        };

        let Some(rl) = raw.local_postgres else {
            return Err(ConfigError::invalid("[local_postgres]", "section is missing (host, port, database, user, password)"));
        };
        let database = rl
            .database
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ConfigError::invalid("[local_postgres] database", "is required (the clinic's local database name)"))?;
        let user = rl
            .user
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ConfigError::invalid("[local_postgres] user", "is required (a role with REPLICATION, see deploy/)"))?;
        let journal_database = rl.journal_database.unwrap_or_else(|| format!("{database}_journal"));
        if journal_database.is_empty() || journal_database == database {
            return Err(ConfigError::invalid(
                "[local_postgres] journal_database",
                "must name a database other than [local_postgres] database (the journal lives beside the clinic's database, \
                 so logical decoding skips its writes); remove the key to use <database>_journal",
            ));
        }
        if journal_database.len() > 63 {
            return Err(ConfigError::invalid(
                "[local_postgres] journal_database",
                format!("{journal_database:?} is longer than PostgreSQL's 63-byte name limit; set a shorter journal_database"),
            ));
        }
        let port = rl.port.unwrap_or(5432);
        if port == 0 {
            return Err(ConfigError::invalid("[local_postgres] port", "must be between 1 and 65535"));
        }
        let local_postgres = LocalPostgres {
            host: rl.host.filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into()),
            port,
            database,
            user,
            password: env(LOCAL_PASSWORD_ENV).map(Secret::new).or(rl.password).unwrap_or_default(),
            schema: ident("[local_postgres] schema", rl.schema.unwrap_or_else(|| "public".into()))?,
            journal_database,
        };

        let sy = raw.sync.unwrap_or_default();
        let tables = match sy.tables {
            Some(t) if t.is_empty() => {
                return Err(ConfigError::invalid("[sync] tables", "must list at least one table"));
            }
            Some(t) => t,
            None => DEFAULT_TABLES.iter().map(|s| s.to_string()).collect(),
        };
        let mut seen = std::collections::HashSet::new();
        for t in &tables {
            if t.is_empty() || t.len() > 63 {
                return Err(ConfigError::invalid("[sync] tables", format!("contains {t:?}: table names must be 1 to 63 bytes")));
            }
            if t.starts_with("_sync_") {
                return Err(ConfigError::invalid(
                    "[sync] tables",
                    format!("contains {t:?}: the service's own control tables cannot be synced"),
                ));
            }
            if !seen.insert(t.as_str()) {
                return Err(ConfigError::invalid("[sync] tables", format!("lists {t:?} twice")));
            }
        }
        let batch_size = sy.batch_size.unwrap_or(100);
        if !(1..=1000).contains(&batch_size) {
            return Err(ConfigError::invalid(
                "[sync] batch_size",
                format!("is {batch_size}; it must be between 1 and 1000 (Supabase returns at most 1,000 rows per request)"),
            ));
        }
        let branches = branch_scope(sy.branch_ids, sy.table, &tables)?;
        let sync = Sync {
            interval_seconds: positive("[sync] interval_seconds", sy.interval_seconds.unwrap_or(30))?,
            batch_size,
            retry_max_attempts: positive("[sync] retry_max_attempts", u64::from(sy.retry_max_attempts.unwrap_or(3)))? as u32,
            retry_delay_seconds: positive("[sync] retry_delay_seconds", sy.retry_delay_seconds.unwrap_or(5))?,
            tables,
            slot_name: slot_ident("[sync] slot_name", sy.slot_name.unwrap_or_else(|| "centrovision_sync".into()))?,
            publication_name: ident("[sync] publication_name", sy.publication_name.unwrap_or_else(|| "centrovision_sync".into()))?,
            origin_name: ident("[sync] origin_name", sy.origin_name.unwrap_or_else(|| "centrovision_sync".into()))?,
            overlap_seconds: sy.overlap_seconds.unwrap_or(300),
            journal_retention_hours: positive("[sync] journal_retention_hours", sy.journal_retention_hours.unwrap_or(168))?,
            health_check_seconds: positive("[sync] health_check_seconds", sy.health_check_seconds.unwrap_or(30))?,
            log_retention_days: positive("[sync] log_retention_days", sy.log_retention_days.unwrap_or(30))?,
            clinic_id: clinic_id(sy.clinic_id)?,
            max_clock_skew_seconds: positive("[sync] max_clock_skew_seconds", sy.max_clock_skew_seconds.unwrap_or(300))?,
            tombstone_retention_days: positive("[sync] tombstone_retention_days", sy.tombstone_retention_days.unwrap_or(90))?,
            conflict_retention_days: positive("[sync] conflict_retention_days", sy.conflict_retention_days.unwrap_or(90))?,
            branches,
        };

        let ra = raw.alerts.unwrap_or_default();
        let webhook_url = env(WEBHOOK_URL_ENV).map(Secret::new).or(ra.webhook_url).unwrap_or_default();
        if !webhook_url.is_empty() {
            match reqwest::Url::parse(webhook_url.expose()) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                _ => return Err(ConfigError::invalid("[alerts] webhook_url", "is not an http(s) URL")),
            }
        }
        let alerts = Alerts {
            consecutive_errors: positive("[alerts] consecutive_errors", u64::from(ra.consecutive_errors.unwrap_or(5)))? as u32,
            webhook_url,
            max_backlog_rows: positive("[alerts] max_backlog_rows", ra.max_backlog_rows.unwrap_or(10_000).max(0) as u64)? as i64,
            max_pending_age_minutes: positive("[alerts] max_pending_age_minutes", ra.max_pending_age_minutes.unwrap_or(60))?,
            max_slot_lag_mb: positive("[alerts] max_slot_lag_mb", ra.max_slot_lag_mb.unwrap_or(1024))?,
        };
        let rh = raw.http.unwrap_or_default();
        let listen = match rh.listen.filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => Some(
                l.parse::<std::net::SocketAddr>()
                    .map_err(|_| ConfigError::invalid("[http] listen", format!("is {l:?}; expected an address like \"127.0.0.1:9187\"")))?,
            ),
        };
        let token = env(HTTP_TOKEN_ENV).map(Secret::new).or(rh.token).unwrap_or_default();
        if !token.is_empty() && token.expose().chars().count() < 16 {
            return Err(ConfigError::invalid(
                "[http] token",
                format!("is too short; use at least 16 characters (e.g. the output of `openssl rand -hex 16`), or set {HTTP_TOKEN_ENV}"),
            ));
        }
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && token.is_empty()
        {
            return Err(ConfigError::invalid(
                "[http] token",
                format!(
                    "is required when [http] listen ({addr}) is not a loopback address: anyone on the network could read the \
                     status and trigger syncs. Set [http] token (or {HTTP_TOKEN_ENV}), or listen on 127.0.0.1"
                ),
            ));
        }
        let http = Http { listen, language: rh.language.unwrap_or_default(), token };
        let daily_at = match raw.audit.unwrap_or_default().daily_at.filter(|d| !d.is_empty()) {
            None => None,
            Some(d) => {
                let bad =
                    || ConfigError::invalid("[audit] daily_at", format!("is {d:?}; expected local time as \"HH:MM\", e.g. \"01:00\""));
                let (h, m) = d.split_once(':').ok_or_else(bad)?;
                let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
                if h > 23 || m > 59 {
                    return Err(bad());
                }
                Some((h, m))
            }
        };
        let audit = Audit { daily_at };

        let lg = raw.logging.unwrap_or_default();
        let level = lg.level.unwrap_or_else(|| "info".into()).to_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
            return Err(ConfigError::invalid("[logging] level", format!("is {level:?}; use one of debug, info, warn, error")));
        }
        let logging = Logging {
            level,
            file: lg.file.filter(|f| !f.as_os_str().is_empty()),
            max_size_mb: match lg.max_size_mb.unwrap_or(10.0) {
                v if v.is_finite() && v > 0.0 && v <= 100_000.0 => v,
                v => return Err(ConfigError::invalid("[logging] max_size_mb", format!("is {v}; it must be greater than 0"))),
            },
            max_files: positive("[logging] max_files", lg.max_files.unwrap_or(5) as u64)? as usize,
        };

        let storage = match raw.storage {
            None => None,
            Some(rs) => Some(storage(rs, supabase.url.as_deref())?),
        };

        Ok(Config { supabase, local_postgres, sync, logging, alerts, http, audit, storage, source: None })
    }

    /// The upstream schema to name in apply calls (None for `public`, the
    /// function's default).
    pub fn upstream_schema(&self) -> Option<&str> {
        (self.supabase.schema != "public").then_some(self.supabase.schema.as_str())
    }

    /// Connection settings for the journal database (same server and
    /// credentials as the local database).
    pub fn journal_pg_config(&self) -> tokio_postgres::Config {
        let mut c = self.local_pg_config();
        c.dbname(&self.local_postgres.journal_database);
        c
    }

    /// Connection settings for the local database.
    pub fn local_pg_config(&self) -> tokio_postgres::Config {
        let l = &self.local_postgres;
        let mut c = tokio_postgres::Config::new();
        c.host(&l.host)
            .port(l.port)
            .dbname(&l.database)
            .user(&l.user)
            .application_name("centrovision-sync")
            .connect_timeout(Duration::from_secs(10))
            // synchronous_commit: see `connect_local`. jit = off: the service
            // runs short statements whose estimates can still pass
            // jit_above_cost (CTEs over a growing journal); compiling them
            // took ~20 ms per call, more than the statement itself.
            .options(
                "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres \
                 -c synchronous_commit=on -c jit=off",
            );
        if !l.password.is_empty() {
            c.password(l.password.expose());
        }
        c
    }

    /// Connection settings for the upstream database (postgres mode).
    pub fn upstream_pg_config(&self) -> Option<tokio_postgres::Config> {
        let mut c: tokio_postgres::Config = normalize_db_url(self.supabase.db_url.expose()).parse().ok()?;
        c.application_name("centrovision-sync");
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(self.supabase.connect_timeout);
        }
        c.options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres");
        Some(c)
    }
}

/// The port of Supabase's transaction pooler (Supavisor, transaction mode).
const TRANSACTION_POOLER_PORT: u16 = 6543;

/// libpq's `sslmode=verify-full` / `verify-ca` (what Supabase documents)
/// are not understood by tokio-postgres: they become `require`, and the TLS
/// connector always verifies the certificate chain and host name anyway.
pub fn normalize_db_url(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require")
}

/// `[sync] branch_ids` and `[sync.table.<name>] scope`, checked.
fn branch_scope(
    branch_ids: Option<Vec<String>>,
    table: Option<std::collections::BTreeMap<String, RawTable>>,
    tables: &[String],
) -> Result<BranchScope, ConfigError> {
    if let Some(ids) = &branch_ids {
        if ids.is_empty() {
            return Err(ConfigError::invalid(
                "[sync] branch_ids",
                "is empty; list the branches this server serves, or remove the key to sync every branch",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if id.trim().is_empty() || id.len() > 200 {
                return Err(ConfigError::invalid("[sync] branch_ids", format!("contains {id:?}: expected a branch id (branches.id)")));
            }
            if !seen.insert(id.as_str()) {
                return Err(ConfigError::invalid("[sync] branch_ids", format!("lists {id:?} twice")));
            }
        }
    }
    let mut overrides = std::collections::BTreeMap::new();
    for (name, raw) in table.unwrap_or_default() {
        let key = format!("[sync.table.{name}] scope");
        if !tables.contains(&name) {
            return Err(ConfigError::InvalidNamed { key, problem: format!("names {name:?}, which is not in [sync] tables") });
        }
        let Some(v) = raw.scope else {
            return Err(ConfigError::InvalidNamed { key, problem: "is missing; use \"branch\", \"shared\" or \"via:<fk column>\"".into() });
        };
        let setting = match v.as_str() {
            "branch" => ScopeSetting::Branch,
            "shared" => ScopeSetting::Shared,
            other => match other.strip_prefix("via:") {
                Some(col) if !col.is_empty() && col.len() <= 63 => ScopeSetting::Via(col.to_string()),
                _ => {
                    return Err(ConfigError::InvalidNamed {
                        key,
                        problem: format!("is {v:?}; use \"branch\", \"shared\" or \"via:<fk column>\" (e.g. \"via:invoice_id\")"),
                    });
                }
            },
        };
        overrides.insert(name, setting);
    }
    Ok(BranchScope { branch_ids, overrides })
}

fn positive(key: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "must be greater than 0"));
    }
    Ok(v)
}

fn ident(key: &'static str, v: String) -> Result<String, ConfigError> {
    if v.is_empty() || v.len() > 63 || v.contains('\0') {
        return Err(ConfigError::invalid(key, format!("is {v:?}; it must be 1 to 63 bytes")));
    }
    Ok(v)
}

/// Slot names are restricted by PostgreSQL to lower-case letters, digits and
/// underscores.
fn slot_ident(key: &'static str, v: String) -> Result<String, ConfigError> {
    let v = ident(key, v)?;
    if !v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(ConfigError::invalid(key, format!("is {v:?}; use only lower-case letters, digits and underscores")));
    }
    Ok(v)
}

fn validate_rest_url(u: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(u).map_err(|e| {
        ConfigError::invalid("[supabase] url", format!("is not a valid URL ({e}); expected e.g. https://<project>.supabase.co"))
    })?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(ConfigError::invalid(
            "[supabase] url",
            "must use https:// (plain http:// is only allowed for a loopback address); the service key would travel unencrypted",
        )),
        other => Err(ConfigError::invalid("[supabase] url", format!("has scheme {other:?}; use https://"))),
    }
}

/// `[storage]`, validated; `supabase_url` gives the default Storage URL.
fn storage(rs: RawStorage, supabase_url: Option<&str>) -> Result<Storage, ConfigError> {
    let buckets = rs.buckets.unwrap_or_default();
    if buckets.is_empty() {
        return Err(ConfigError::invalid("[storage] buckets", "must list at least one bucket (e.g. [\"study-files\"])"));
    }
    for b in &buckets {
        if b.is_empty() || b.len() > 100 || !b.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
            return Err(ConfigError::invalid(
                "[storage] buckets",
                format!("contains {b:?}: bucket names are 1 to 100 letters, digits, '-', '_' or '.'"),
            ));
        }
    }
    let local_dir = rs
        .local_dir
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| ConfigError::invalid("[storage] local_dir", "is required (the directory holding the mirror)"))?;
    if !local_dir.is_absolute() {
        return Err(ConfigError::invalid("[storage] local_dir", format!("is {}; use an absolute path", local_dir.display())));
    }
    let url = match rs.url.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => match supabase_url {
            Some(base) => format!("{}/storage/v1", base.trim_end_matches('/')),
            None => return Err(ConfigError::invalid("[storage] url", "is required when [supabase] url is not set")),
        },
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| ConfigError::invalid("[storage] url", format!("is not a valid URL ({e})")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(ConfigError::invalid(
                "[storage] url",
                "must use https:// (plain http:// only for a loopback address); the service key would travel unencrypted",
            ));
        }
    }
    let bandwidth = match rs.bandwidth_limit_mbps.unwrap_or(0.0) {
        v if v.is_finite() && v >= 0.0 => (v * 1_000_000.0 / 8.0) as u64,
        v => return Err(ConfigError::invalid("[storage] bandwidth_limit_mbps", format!("is {v}; use 0 (unlimited) or a positive number"))),
    };
    Ok(Storage {
        buckets,
        local_dir,
        url: url.trim_end_matches('/').to_string(),
        table: ident("[storage] table", rs.table.unwrap_or_else(|| "study_files".into()))?,
        path_column: ident("[storage] path_column", rs.path_column.unwrap_or_else(|| "storage_path".into()))?,
        max_file_bytes: positive("[storage] max_file_mb", rs.max_file_mb.unwrap_or(1024))? * 1024 * 1024,
        bandwidth_bytes_per_second: bandwidth,
        retention_days: rs.retention_days.unwrap_or(30),
        alert_after_minutes: positive("[storage] alert_after_minutes", rs.alert_after_minutes.unwrap_or(60))?,
    })
}

/// Removes any occurrence of the secret from a message.
fn scrub(msg: &str, secret: &str) -> String {
    if secret.len() >= 4 { msg.replace(secret, "<redacted>") } else { msg.to_string() }
}

fn redact_toml_message(e: &toml::de::Error) -> String {
    // The message quotes the offending line of the file. For lines that hold
    // secrets, drop the quoted source to keep the value out of logs.
    let msg = e.to_string();
    let secret_keys = ["service_key", "password", "db_url", "webhook_url", "token"];
    let quotes_secret = msg.lines().any(|l| {
        let t = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ' || c == '|');
        secret_keys.iter().any(|k| t.trim_start().starts_with(k))
    });
    if quotes_secret {
        let head: Vec<&str> = msg.lines().filter(|l| !l.contains('|') && !l.trim().is_empty()).collect();
        format!("{} (the line holds a secret and is not shown)", head.join("; "))
    } else {
        msg.trim_end().replace('\n', "\n  ")
    }
}

/// `[sync] clinic_id`, or the machine's host name when absent: letters,
/// digits, `-`, `_` and `.` (so never `cloud:…`, upstream's name for the
/// cloud app's writes), and not `legacy`.
fn clinic_id(configured: Option<String>) -> Result<String, ConfigError> {
    const KEY: &str = "[sync] clinic_id";
    let id = match configured {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("COMPUTERNAME").ok())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_default();
            let host: String = host
                .trim()
                .to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
                .collect();
            if host.is_empty() {
                return Err(ConfigError::invalid(
                    KEY,
                    "is not set and the host name cannot be read; set it to this branch's name, e.g. clinic_id = \"sucursal-centro\"",
                ));
            }
            host
        }
    };
    if id.is_empty() || id.len() > 63 {
        return Err(ConfigError::invalid(KEY, format!("is {id:?}; it must be 1 to 63 characters")));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(ConfigError::invalid(KEY, format!("is {id:?}; use letters, digits, '-', '_' and '.' only")));
    }
    if id == "legacy" {
        return Err(ConfigError::invalid(
            KEY,
            "is \"legacy\", which names rows written before sync state existed; choose this branch's name",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_REST: &str = r#"
[supabase]
url = "https://example.supabase.co"
service_key = "sk-very-secret-value"

[local_postgres]
database = "centrovision"
user = "centrovision_app"
password = "pw-very-secret"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_rest_config_gets_the_spec_defaults() {
        let c = Config::from_toml(MIN_REST, "t", no_env).unwrap();
        assert_eq!(c.sync.interval_seconds, 30);
        assert_eq!(c.sync.batch_size, 100);
        assert_eq!(c.sync.retry_max_attempts, 3);
        assert_eq!(c.sync.retry_delay_seconds, 5);
        assert_eq!(c.sync.tables.len(), 23);
        assert_eq!(c.sync.slot_name, "centrovision_sync");
        assert_eq!(c.sync.publication_name, "centrovision_sync");
        assert_eq!(c.local_postgres.port, 5432);
        assert_eq!(c.local_postgres.journal_database, "centrovision_journal");
        assert_eq!(c.logging.level, "info");
        assert_eq!(c.supabase.mode, UpstreamMode::Rest);
    }

    #[test]
    fn a_journal_database_equal_to_the_clinic_database_is_refused_naming_the_key() {
        let text = MIN_REST.replace("database = \"centrovision\"\n", "database = \"centrovision\"\njournal_database = \"centrovision\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[local_postgres] journal_database") && e.contains("other than"), "{e}");
    }

    #[test]
    fn storage_section_defaults_its_url_to_supabase_and_names_a_bad_key() {
        let text = format!("{MIN_REST}\n[storage]\nbuckets = [\"study-files\"]\nlocal_dir = \"/var/lib/cv/files\"\n");
        let s = Config::from_toml(&text, "t", no_env).unwrap().storage.unwrap();
        assert_eq!(s.url, "https://example.supabase.co/storage/v1");
        assert_eq!((s.table.as_str(), s.path_column.as_str()), ("study_files", "storage_path"));
        assert_eq!(s.max_file_bytes, 1024 * 1024 * 1024);
        assert!(Config::from_toml(MIN_REST, "t", no_env).unwrap().storage.is_none(), "no section, no mirror");
        let bad = |extra: &str| Config::from_toml(&format!("{MIN_REST}\n[storage]\n{extra}\n"), "t", no_env).unwrap_err().to_string();
        assert!(bad("local_dir = \"/x\"").contains("[storage] buckets"));
        assert!(bad("buckets = [\"a b\"]\nlocal_dir = \"/x\"").contains("[storage] buckets"));
        assert!(bad("buckets = [\"b\"]").contains("[storage] local_dir"));
        assert!(bad("buckets = [\"b\"]\nlocal_dir = \"rel\"").contains("[storage] local_dir"));
        assert!(bad("buckets = [\"b\"]\nlocal_dir = \"/x\"\nurl = \"http://example.com/storage/v1\"").contains("[storage] url"));
        assert!(bad("buckets = [\"b\"]\nlocal_dir = \"/x\"\nmax_file_mb = 0").contains("[storage] max_file_mb"));
        assert!(bad("buckets = [\"b\"]\nlocal_dir = \"/x\"\nbandwidth = 1").contains("bandwidth"));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let text = format!("{MIN_REST}\n[sync]\nbatch_sise = 10\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("batch_sise"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_in_the_error() {
        let text = format!("{MIN_REST}\n[sync]\nbatch_size = \"lots\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = MIN_REST.replace("database = \"centrovision\"\n", "");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[local_postgres] database"), "{e}");
    }

    #[test]
    fn out_of_range_batch_size_is_rejected() {
        let text = format!("{MIN_REST}\n[sync]\nbatch_size = 5000\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[sync] batch_size"), "{e}");
    }

    #[test]
    fn postgres_mode_requires_db_url() {
        let text = MIN_REST.replace("[supabase]\n", "[supabase]\nmode = \"postgres\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[supabase] db_url"), "{e}");
    }

    #[test]
    fn plain_http_is_refused_unless_loopback() {
        let text = MIN_REST.replace("https://example.supabase.co", "http://example.supabase.co");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        let text = MIN_REST.replace("https://example.supabase.co", "http://127.0.0.1:8080");
        Config::from_toml(&text, "t", no_env).unwrap();
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        let env = |k: &str| (k == SERVICE_KEY_ENV).then(|| "from-env-secret".to_string());
        let c = Config::from_toml(MIN_REST, "t", env).unwrap();
        assert_eq!(c.supabase.service_key.expose(), "from-env-secret");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("from-env-secret") && !dbg.contains("pw-very-secret"), "{dbg}");
    }

    #[test]
    fn libpq_verify_modes_are_accepted_in_db_url() {
        let text = MIN_REST.replace(
            "[supabase]\n",
            "[supabase]\nmode = \"postgres\"\ndb_url = \"postgresql://u:p@db.example.supabase.co:5432/postgres?sslmode=verify-full\"\n",
        );
        let c = Config::from_toml(&text, "t", no_env).unwrap();
        assert_eq!(c.upstream_pg_config().unwrap().get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn the_transaction_pooler_is_refused_with_the_connections_that_work() {
        let with = |url: &str| MIN_REST.replace("[supabase]\n", &format!("[supabase]\nmode = \"postgres\"\ndb_url = \"{url}\"\n"));
        let e = Config::from_toml(&with("postgresql://postgres.ref:p@aws-0-us-east-1.pooler.supabase.com:6543/postgres"), "t", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[supabase] db_url") && e.contains("transaction pooler") && e.contains(":5432"), "{e}");
        assert!(!e.contains("postgres.ref:p@"), "the URL's password is not repeated: {e}");
        Config::from_toml(&with("postgresql://postgres.ref:p@aws-0-us-east-1.pooler.supabase.com:5432/postgres"), "t", no_env).unwrap();
        Config::from_toml(&with("host=db.ref.supabase.co port=5432 user=postgres password=p dbname=postgres"), "t", no_env).unwrap();
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let text = MIN_REST.replace("[supabase]\n", "[supabase]\ndb_ca_file = \"/nonexistent/ca.crt\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[supabase] db_ca_file") && e.contains("/nonexistent/ca.crt"), "{e}");
    }

    #[test]
    fn listening_beyond_loopback_without_a_token_is_refused_naming_the_key() {
        let text = format!("{MIN_REST}\n[http]\nlisten = \"0.0.0.0:9187\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[http] token") && e.contains("0.0.0.0:9187") && e.contains("loopback"), "{e}");
        let text = format!("{MIN_REST}\n[http]\nlisten = \"0.0.0.0:9187\"\ntoken = \"a-long-enough-page-token\"\n");
        let c = Config::from_toml(&text, "t", no_env).unwrap();
        assert_eq!(c.http.token.expose(), "a-long-enough-page-token");
        assert!(!format!("{c:?}").contains("a-long-enough-page-token"), "the token must not print");
        let text = format!("{MIN_REST}\n[http]\nlisten = \"127.0.0.1:9187\"\n");
        assert!(Config::from_toml(&text, "t", no_env).unwrap().http.token.is_empty(), "loopback needs no token");
    }

    #[test]
    fn branch_scope_settings_are_checked_naming_the_key() {
        let c = Config::from_toml(MIN_REST, "t", no_env).unwrap();
        assert!(c.sync.branches.branch_ids.is_none(), "absent branch_ids: unscoped");
        let text = format!("{MIN_REST}\n[sync]\nbranch_ids = [\"b1\", \"b2\"]\n[sync.table.invoice_items]\nscope = \"via:invoice_id\"\n");
        let c = Config::from_toml(&text, "t", no_env).unwrap();
        assert_eq!(c.sync.branches.branch_ids.as_deref(), Some(&["b1".to_string(), "b2".to_string()][..]));
        assert_eq!(c.sync.branches.overrides["invoice_items"], ScopeSetting::Via("invoice_id".into()));
        let text = format!("{MIN_REST}\n[sync]\nbranch_ids = []\n");
        assert!(Config::from_toml(&text, "t", no_env).unwrap_err().to_string().contains("[sync] branch_ids"));
        let text = format!("{MIN_REST}\n[sync.table.patients]\nscope = \"branches\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[sync.table.patients] scope") && e.contains("via:<fk column>"), "{e}");
        let text = format!("{MIN_REST}\n[sync.table.nope]\nscope = \"shared\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[sync.table.nope] scope") && e.contains("not in [sync] tables"), "{e}");
    }

    #[test]
    fn the_page_is_spanish_unless_english_is_asked_for() {
        assert_eq!(Config::from_toml(MIN_REST, "t", no_env).unwrap().http.language, Language::Es);
        let text = format!("{MIN_REST}\n[http]\nlanguage = \"en\"\n");
        assert_eq!(Config::from_toml(&text, "t", no_env).unwrap().http.language, Language::En);
        let text = format!("{MIN_REST}\n[http]\nlanguage = \"fr\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("language"), "{e}");
    }

    #[test]
    fn a_short_token_is_refused() {
        let text = format!("{MIN_REST}\n[http]\ntoken = \"short\"\n");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(e.contains("[http] token") && e.contains("16") && !e.contains("short\""), "{e}");
    }

    #[test]
    fn a_type_error_on_a_secret_line_does_not_echo_it() {
        let text = MIN_REST.replace("password = \"pw-very-secret\"", "password = pw-very-secret");
        let e = Config::from_toml(&text, "t", no_env).unwrap_err().to_string();
        assert!(!e.contains("pw-very-secret"), "{e}");
    }
}
