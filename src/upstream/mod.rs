//! The upstream (Supabase): where the up path delivers changes and where the
//! down path reads them.
//!
//! [`Upstream`] is the sink/source contract both transports implement:
//! - `apply` delivers a batch of changes at least once; duplicates are
//!   tolerated because the upstream apply is last-write-wins and idempotent.
//!   There is exactly one LWW implementation, the SQL function in
//!   `sql/upstream/001_apply.sql`, called directly in postgres mode and via
//!   PostgREST RPC in REST mode. A batch applies atomically; the outcome says
//!   per change whether it was applied, kept upstream (upstream was newer or
//!   equal) or rejected (with the SQLSTATE and message).
//! - `pull` reads one keyset page on `(updated_at, pk)`, returned as the JSON
//!   array text PostgREST would return, so the local apply is identical in
//!   both modes and values are never re-encoded in Rust.

pub mod postgres;
pub mod rest;

use serde::Deserialize;

use crate::config::{Config, UpstreamMode};
use crate::error::{ErrorKind, Result, SyncError};

/// Version of the upstream SQL contract this build expects
/// (`public.centrovision_sync_version()`).
pub const CONTRACT_VERSION: i32 = 2;

/// The upstream SQL, in install order (also printed by
/// `init --print-upstream-sql`).
pub const UPSTREAM_SQL: &[(&str, &str)] = &[
    ("001_apply.sql", include_str!("../../sql/upstream/001_apply.sql")),
    ("002_verify.sql", include_str!("../../sql/upstream/002_verify.sql")),
];

/// The hash functions, also installed locally so both sides hash alike.
pub const VERIFY_SQL: &str = include_str!("../../sql/upstream/002_verify.sql");

/// The keyset index the poller needs on each upstream table, so a page is an
/// index range scan, not a scan and sort of every row sharing a timestamp
/// (bulk imports do). `CONCURRENTLY`: no long lock on the group's tables.
pub fn keyset_index_sql(schema: &str, table: &str, pk: &str) -> String {
    let name = format!("{}_cvsync_keyset_idx", table.chars().take(40).collect::<String>());
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} (updated_at, {});",
        crate::catalog::quote_ident(&name),
        crate::catalog::qualified(schema, table),
        crate::catalog::quote_ident(pk)
    )
}

/// Per-change result of a batch, by the caller's index `i`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Outcome {
    #[serde(default)]
    pub applied: Vec<i64>,
    #[serde(default)]
    pub kept: Vec<i64>,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rejected {
    pub i: i64,
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

/// Where a keyset page starts: rows strictly after `(updated_at, id)`, or
/// at/after `updated_at` when `id` is None; everything when both are None.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// timestamptz text at full microsecond precision.
    pub updated_at: Option<String>,
    pub id: Option<String>,
}

/// A table as the upstream reads it.
#[derive(Debug, Clone)]
pub struct TableRef<'a> {
    pub name: &'a str,
    pub pk: &'a str,
    /// SQL type of the key, for casts in postgres mode.
    pub pk_type: &'a str,
}

/// The contract both transports implement (see the module docs).
pub trait Upstream: Sync {
    /// Applies a batch: `changes` is a JSON array in the contract of
    /// `sql/upstream/001_apply.sql`.
    fn apply(&self, changes: &str) -> impl Future<Output = Result<Outcome>> + Send;
    /// One keyset page ordered by `(updated_at, pk)`, as a JSON array text.
    fn pull(&self, table: &TableRef<'_>, after: &Cursor, limit: usize) -> impl Future<Output = Result<String>> + Send;
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
    async fn pull(&self, table: &TableRef<'_>, after: &Cursor, limit: usize) -> Result<String> {
        match self {
            Client::Postgres(p) => p.pull(table, after, limit).await,
            Client::Rest(r) => r.pull(table, after, limit).await,
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
        assert_eq!((o.rejected[0].i, o.rejected[0].code.as_deref()), (1, Some("22P02")));
    }
}
