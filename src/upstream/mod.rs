//! The upstream (Supabase): where the up path delivers changes and where the
//! down path reads them.
//!
//! [`Upstream`] is the sink/source contract both transports implement:
//! - `apply` delivers a batch of one clinic's changes at least once;
//!   duplicates are tolerated because every change carries its commit
//!   position and upstream applies one writer's changes in that order (a
//!   re-sent change is a no-op). There is exactly one implementation of the
//!   conflict rule, the SQL in `sql/upstream/001_apply.sql` and
//!   `003_row_state.sql`, called directly in postgres mode and via PostgREST
//!   RPC in REST mode. A batch applies atomically; the outcome says per
//!   change whether it was applied, kept (it lost, or upstream had it
//!   already) or rejected (with the SQLSTATE and message).
//! - `changes` reads one page of the change feed (other writers' versions in
//!   server commit order, as one JSON document), so the local apply is
//!   identical in both modes and values are never re-encoded in Rust.
//! - `pull`/`fetch` read rows by keyset or key (benchmarks, parent repair,
//!   `verify --repair`).

pub mod postgres;
pub mod rest;

use serde::Deserialize;

use crate::config::{Config, UpstreamMode};
use crate::error::{ErrorKind, Result, SyncError};

/// Version of the upstream SQL contract this build expects: the one
/// definition (`public.centrovision_sync_version()` is generated from it by
/// [`contract_sql`]). 3: per-row sync state, writers, the change feed.
/// 4: the feed takes the caller's branch scope (`crate::scope`).
pub const CONTRACT_VERSION: i32 = 4;

/// The upstream SQL files, in install order.
pub const UPSTREAM_SQL: &[(&str, &str)] = &[
    ("001_apply.sql", include_str!("../../sql/upstream/001_apply.sql")),
    ("002_verify.sql", include_str!("../../sql/upstream/002_verify.sql")),
    ("003_row_state.sql", include_str!("../../sql/upstream/003_row_state.sql")),
    ("004_api_schema.sql", include_str!("../../sql/upstream/004_api_schema.sql")),
];

/// `public.centrovision_sync_version()`, returning [`CONTRACT_VERSION`].
pub fn contract_sql() -> String {
    format!(
        "BEGIN;
CREATE OR REPLACE FUNCTION public.centrovision_sync_version()
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = ''
AS $fn$ SELECT {CONTRACT_VERSION} $fn$;
COMMENT ON FUNCTION public.centrovision_sync_version() IS 'centrovision-sync upstream contract version';
REVOKE EXECUTE ON FUNCTION public.centrovision_sync_version() FROM PUBLIC;
DO $do$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    REVOKE EXECUTE ON FUNCTION public.centrovision_sync_version() FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE EXECUTE ON FUNCTION public.centrovision_sync_version() FROM authenticated;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    GRANT EXECUTE ON FUNCTION public.centrovision_sync_version() TO service_role;
  END IF;
END
$do$;
NOTIFY pgrst, 'reload schema';
COMMIT;
"
    )
}

/// The per-project statements after the files: the conflict settings from
/// `[sync]`, each synced table enrolled (registered in
/// `centrovision_sync.synced_table`, the only tables the upstream functions
/// write or read; triggers that record other writers' versions; a version
/// for each existing row), and with a `[supabase] schema` other than
/// `public` the RPC entry points in it (`sql/upstream/004_api_schema.sql`).
pub fn project_sql(cfg: &Config) -> String {
    use crate::catalog::quote_literal;
    let s = &cfg.sync;
    let mut out = format!(
        "INSERT INTO centrovision_sync.settings (key, value) VALUES
  ('max_clock_skew_seconds', '{}'), ('tombstone_retention_days', '{}'), ('conflict_retention_days', '{}')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
",
        s.max_clock_skew_seconds, s.tombstone_retention_days, s.conflict_retention_days
    );
    for t in &s.tables {
        out.push_str(&format!("SELECT centrovision_sync.enroll_table({}, {});\n", quote_literal(&cfg.supabase.schema), quote_literal(t)));
    }
    // PostgREST looks RPCs up in the request's profile, `[supabase] schema`.
    if cfg.supabase.schema != "public" {
        out.push_str(&format!("SELECT centrovision_sync.expose_api({});\n", quote_literal(&cfg.supabase.schema)));
    }
    out
}

/// Everything `init --upstream` installs, as one script (what
/// `init --print-upstream-sql` prints for pasting into the SQL editor).
pub fn upstream_script(cfg: Option<&Config>) -> String {
    let mut out = String::new();
    for (name, sql) in UPSTREAM_SQL {
        out.push_str(&format!("-- sql/upstream/{name}\n{sql}\n"));
    }
    out.push_str("-- contract version\n");
    out.push_str(&contract_sql());
    match cfg {
        Some(cfg) => {
            out.push_str("-- this project's settings and synced tables\n");
            out.push_str(&project_sql(cfg));
        }
        None => out.push_str(
            "-- then, for each synced table: SELECT centrovision_sync.enroll_table('public', '<table>');\n\
             -- and with a [supabase] schema other than public: SELECT centrovision_sync.expose_api('<schema>');\n",
        ),
    }
    out
}

/// The hash functions, also installed locally so both sides hash alike.
pub const VERIFY_SQL: &str = include_str!("../../sql/upstream/002_verify.sql");

/// Per-change result of a batch, by the caller's index `i`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Outcome {
    #[serde(default)]
    pub applied: Vec<i64>,
    #[serde(default)]
    pub kept: Vec<i64>,
    /// Changes whose stamp was too far ahead of the server's clock (they
    /// were decided with the server's now).
    #[serde(default)]
    pub clamped: Vec<i64>,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rejected {
    /// The index of the rejected change in the batch.
    #[serde(rename = "i")]
    pub index: i64,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
}

impl Rejected {
    /// The text stored in `_sync_pending.error`.
    pub fn describe(&self) -> String {
        let mut s = format!("rejected upstream: {}", self.message);
        if let Some(c) = &self.code {
            s.push_str(&format!(" (SQLSTATE {c})"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!("; hint: {h}"));
        }
        s
    }
}

/// A table as the upstream reads it.
#[derive(Debug, Clone)]
pub struct TableRef<'a> {
    pub name: &'a str,
    /// The column rows are fetched by (the primary key, or a foreign key).
    pub pk: &'a str,
    /// SQL type of the key, for casts in postgres mode.
    pub pk_type: &'a str,
    /// The local table's columns (a read that must name columns names
    /// these).
    pub columns: &'a [crate::catalog::Column],
}

impl<'a> TableRef<'a> {
    /// `table`, its rows fetched by `key` (one of its columns).
    pub fn new(table: &'a crate::catalog::Table, key: &'a crate::catalog::Column) -> Self {
        TableRef { name: &table.name, pk: &key.name, pk_type: &key.type_name, columns: &table.columns }
    }

    /// Arrays of json/jsonb, read in their text form: their JSON rendering
    /// cannot tell an element that is JSON `null` from a NULL element.
    pub fn json_arrays(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.columns.iter().filter(|c| c.is_json_array()).map(|c| c.name.as_str())
    }
}

/// The contract both transports implement (see the module docs).
pub trait Upstream: Sync {
    /// Applies a batch: `changes` is a JSON array in the contract of
    /// `sql/upstream/001_apply.sql`.
    fn apply(&self, changes: &str) -> impl Future<Output = Result<Outcome>> + Send;
    /// Rows of `table` with these keys, as a JSON array text.
    fn fetch(&self, table: &TableRef<'_>, ids: &[String]) -> impl Future<Output = Result<String>> + Send;
    /// A cheap authenticated round trip.
    fn health(&self) -> impl Future<Output = Result<()>> + Send;
    /// The installed contract version, None when the functions are missing.
    fn contract_version(&self) -> impl Future<Output = Result<Option<i32>>> + Send;
    /// `centrovision_sync_bucket_hashes` (sql/upstream/002_verify.sql).
    fn bucket_hashes(&self, h: &HashRequest<'_>) -> impl Future<Output = Result<String>> + Send;
    /// `centrovision_sync_row_hashes` for the `wanted` buckets.
    fn row_hashes(&self, h: &HashRequest<'_>, wanted: &[i32]) -> impl Future<Output = Result<String>> + Send;
    /// One page of the change feed (`centrovision_sync_changes`,
    /// sql/upstream/003_row_state.sql) for this clinic, as JSON text.
    fn changes(&self, req: &FeedRequest<'_>) -> impl Future<Output = Result<String>> + Send;
    /// The conflict log, newest first, as a JSON array text.
    fn conflicts(&self, q: &ConflictQuery<'_>) -> impl Future<Output = Result<String>> + Send;
    /// Conflicts decided since a time (timestamptz text; None = all kept).
    fn conflict_count(&self, since: Option<&str>) -> impl Future<Output = Result<i64>> + Send;
    /// Drops tombstones and conflicts past their retention; JSON counts.
    fn prune(&self) -> impl Future<Output = Result<String>> + Send;
    /// The current version of rows `keys` of `table`
    /// (`centrovision_sync_row_versions`), each marked whether its
    /// transaction is visible in the snapshot `seen_in`; a JSON array text.
    fn row_versions(&self, table: &str, keys: &[String], seen_in: Option<&str>) -> impl Future<Output = Result<String>> + Send;
}

/// Arguments of `centrovision_sync_changes` besides the writer (the
/// transport adds this clinic's id). Field names are the SQL argument names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedRequest<'a> {
    #[serde(rename = "schema_name")]
    pub schema: &'a str,
    pub tables: &'a [String],
    /// Snapshot text of the last completed window (None: from the start).
    pub prev: Option<&'a str>,
    /// Snapshot text of the window being read (None: take a fresh one).
    pub target: Option<&'a str>,
    /// Last version_id read inside the window.
    pub after: i64,
    #[serde(rename = "lim")]
    pub limit: i64,
    /// With `prev` None: skip versions stamped before this (timestamptz text).
    pub since: Option<&'a str>,
    /// This server's branch scope ([`crate::scope::Scopes::feed_arg`]);
    /// None: unscoped (not sent: the argument defaults to NULL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a serde_json::Value>,
}

/// Arguments of `centrovision_sync_conflicts`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConflictQuery<'a> {
    #[serde(rename = "schema_name")]
    pub schema: &'a str,
    /// None: every table.
    pub tables: Option<&'a [String]>,
    pub since: Option<&'a str>,
    #[serde(rename = "lim")]
    pub limit: i64,
}

/// Arguments of the hash functions (serialized with the parameter names
/// of `sql/upstream/002_verify.sql`, for PostgREST RPC).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HashRequest<'a> {
    #[serde(rename = "s")]
    pub schema: &'a str,
    #[serde(rename = "t")]
    pub table: &'a str,
    #[serde(rename = "pk")]
    pub key_column: &'a str,
    pub cols: &'a [String],
    pub buckets: i32,
}

/// The configured transport.
#[allow(clippy::large_enum_variant, reason = "one per process, built once and never moved on a hot path")]
pub enum Client {
    Postgres(postgres::PgUpstream),
    Rest(rest::RestUpstream),
}

impl Client {
    pub fn from_config(cfg: &Config) -> Result<Client> {
        match cfg.supabase.mode {
            UpstreamMode::Postgres => Ok(Client::Postgres(postgres::PgUpstream::new(cfg)?)),
            UpstreamMode::Rest => Ok(Client::Rest(rest::RestUpstream::new(cfg)?)),
        }
    }
}

impl Upstream for Client {
    async fn apply(&self, changes: &str) -> Result<Outcome> {
        match self {
            Client::Postgres(p) => p.apply(changes).await,
            Client::Rest(r) => r.apply(changes).await,
        }
    }
    async fn fetch(&self, table: &TableRef<'_>, ids: &[String]) -> Result<String> {
        match self {
            Client::Postgres(p) => p.fetch(table, ids).await,
            Client::Rest(r) => r.fetch(table, ids).await,
        }
    }
    async fn health(&self) -> Result<()> {
        match self {
            Client::Postgres(p) => p.health().await,
            Client::Rest(r) => r.health().await,
        }
    }
    async fn contract_version(&self) -> Result<Option<i32>> {
        match self {
            Client::Postgres(p) => p.contract_version().await,
            Client::Rest(r) => r.contract_version().await,
        }
    }
    async fn bucket_hashes(&self, h: &HashRequest<'_>) -> Result<String> {
        match self {
            Client::Postgres(p) => p.bucket_hashes(h).await,
            Client::Rest(r) => r.bucket_hashes(h).await,
        }
    }
    async fn row_hashes(&self, h: &HashRequest<'_>, wanted: &[i32]) -> Result<String> {
        match self {
            Client::Postgres(p) => p.row_hashes(h, wanted).await,
            Client::Rest(r) => r.row_hashes(h, wanted).await,
        }
    }
    async fn changes(&self, req: &FeedRequest<'_>) -> Result<String> {
        match self {
            Client::Postgres(p) => p.changes(req).await,
            Client::Rest(r) => r.changes(req).await,
        }
    }
    async fn conflicts(&self, q: &ConflictQuery<'_>) -> Result<String> {
        match self {
            Client::Postgres(p) => p.conflicts(q).await,
            Client::Rest(r) => r.conflicts(q).await,
        }
    }
    async fn conflict_count(&self, since: Option<&str>) -> Result<i64> {
        match self {
            Client::Postgres(p) => p.conflict_count(since).await,
            Client::Rest(r) => r.conflict_count(since).await,
        }
    }
    async fn prune(&self) -> Result<String> {
        match self {
            Client::Postgres(p) => p.prune().await,
            Client::Rest(r) => r.prune().await,
        }
    }
    async fn row_versions(&self, table: &str, keys: &[String], seen_in: Option<&str>) -> Result<String> {
        match self {
            Client::Postgres(p) => p.row_versions(table, keys, seen_in).await,
            Client::Rest(r) => r.row_versions(table, keys, seen_in).await,
        }
    }
}

/// Number of elements of a JSON array text built by the pusher.
pub(crate) fn count_elements(changes: &str) -> usize {
    serde_json::from_str::<Vec<&serde_json::value::RawValue>>(changes).map(|v| v.len()).unwrap_or(0)
}

/// Parses the apply function's result and checks every index is accounted for.
pub(crate) fn parse_outcome(text: &str, expected: usize) -> Result<Outcome> {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        // Not upstream answering: unreachable, as far as sync can tell.
        return Err(SyncError::new(
            ErrorKind::UpstreamUnreachable,
            format!(
                "upstream answered the apply call with something that is not JSON ({} bytes, starting {:?})",
                text.len(),
                text.chars().take(40).collect::<String>()
            ),
        )
        .with_hint("a proxy or captive portal may be in the way; the batch will be retried"));
    }
    let o: Outcome = serde_json::from_str(text)
        .map_err(|e| SyncError::new(ErrorKind::Contract, format!("upstream apply returned an unexpected result ({e})")).with_hint(
            "the upstream SQL functions may be outdated; run `centrovision-sync init --upstream` or paste `init --print-upstream-sql` into the Supabase SQL editor",
        ))?;
    let n = o.applied.len() + o.kept.len() + o.rejected.len();
    if n != expected {
        return Err(SyncError::new(ErrorKind::Contract, format!("upstream apply reported {n} outcomes for {expected} changes")));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_requests_carry_the_parameter_names_of_the_sql_functions() {
        let cols = vec!["id".to_string(), "name".to_string()];
        let h = HashRequest { schema: "public", table: "patients", key_column: "id", cols: &cols, buckets: 16 };
        assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"s":"public","t":"patients","pk":"id","cols":["id","name"],"buckets":16}"#);
    }

    #[test]
    fn rejections_are_read_by_their_short_keys() {
        let o = parse_outcome(r#"{"applied":[0],"rejected":[{"i":1,"code":"22P02","message":"bad"}]}"#, 2).unwrap();
        assert_eq!(o.applied, vec![0]);
        assert_eq!((o.rejected[0].index, o.rejected[0].code.as_deref()), (1, Some("22P02")));
    }
}
