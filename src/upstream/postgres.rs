//! Direct PostgreSQL connection to the Supabase database (`mode = "postgres"`).
//!
//! Calls the same SQL functions the REST mode calls through PostgREST, so
//! both modes share one implementation of the conflict rule. The connection
//! is opened lazily and dropped after any connection-level failure, so the
//! next call reconnects.
//!
//! Session role: the apply function writes under `session_replication_role
//! = replica` (no app triggers, no FK checks; see `sql/upstream/001_apply.sql`).
//! Set per call (`SET LOCAL`), that value changes twice per batch, and every
//! change makes PostgreSQL drop the session's cached plans, so each call
//! planned its dozen statements again: 2.4 of the 4 ms a 5-row batch took
//! (PostgreSQL 15). This connection is ours alone (a session: the direct
//! connection or the session pooler; the transaction pooler is refused by
//! the config), so before an apply it sets `replica` for the session, and the
//! function's own `SET LOCAL` then changes nothing. The rules:
//!
//! - only the apply function runs under the session's `replica`; statements
//!   that install or change objects ([`PgUpstream::run_batch`], the daily
//!   prune) reset it first, so the project's event triggers fire for them;
//!   reads run either way (what they return does not depend on it);
//! - a role that may not set it for the session (SQLSTATE 42501) keeps the
//!   per-call `SET LOCAL`, which the function owner may do: same writes,
//!   slower; said once in the log;
//! - a new connection starts at the server's default, as any session does.
//!   The setting lives as long as the session: a direct connection's session
//!   ends with it; a pooler in session mode must reset a session before
//!   handing it to another client (PgBouncer's `server_reset_query`,
//!   `DISCARD ALL` by default), which is also what keeps any client's `SET`
//!   from leaking. A pooler that hands on sessions unreset (transaction mode)
//!   is unsuitable anyway, and Supabase's (port 6543) is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{ConflictQuery, FeedRequest, HashRequest, Outcome, TableRef, Upstream, parse_outcome};
use crate::catalog::{object_sql, qualified, quote_ident, quote_literal};
use crate::config::Config;
use crate::error::{ErrorKind, Result, SyncError};

const CTX: crate::error::At = crate::error::UPSTREAM;

pub struct PgUpstream {
    config: tokio_postgres::Config,
    /// Bound on every call ([supabase] request_timeout_seconds): a half-open
    /// connection must not stall sync until TCP gives up.
    timeout: std::time::Duration,
    tls: MakeRustlsConnect,
    schema: String,
    /// This clinic's writer id ([sync] clinic_id).
    writer: String,
    conn: Mutex<Option<Session>>,
    /// The role was refused `replica` for the session once (logged once).
    replica_refused: AtomicBool,
}

/// What the log and `doctor` say when the role may not keep `replica` for
/// its session.
pub const REPLICA_REFUSED: &str = "the upstream role may not set session_replication_role for its session: each batch sets it \
     for its own transaction (same writes, about 2 ms more a batch)";

/// The open connection and the `session_replication_role` this service set
/// on it.
struct Session {
    client: tokio_postgres::Client,
    /// `replica` for the session (set by [`Session::switch`]).
    replica: bool,
    /// The server refused the session-level `replica` on this connection.
    refused: bool,
}

/// What a call needs of the session's `session_replication_role` (see the
/// module header).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The apply function: `replica` for the session when the role may.
    Apply,
    /// Statements that install or change objects: the server's default.
    Default,
    /// Reads: whatever the session has.
    Either,
}

impl Session {
    /// Brings the session to what `role` needs. Returns whether the server
    /// refused `replica` just now.
    async fn switch(&mut self, role: Role) -> std::result::Result<bool, tokio_postgres::Error> {
        match role {
            Role::Apply if !self.replica && !self.refused => {
                match self.client.batch_execute("SET session_replication_role = replica").await {
                    Ok(()) => self.replica = true,
                    Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                        self.refused = true;
                        return Ok(true);
                    }
                    Err(e) => return Err(e),
                }
            }
            Role::Default if self.replica => {
                self.client.batch_execute("RESET session_replication_role").await?;
                self.replica = false;
            }
            _ => {}
        }
        Ok(false)
    }
}

/// TLS with full chain and host-name verification (rustls, ring provider).
/// With `sslmode=prefer` (the default) a server without TLS is reached in
/// plain text, as libpq does; `sslmode=require` refuses that.
fn tls(cfg: &Config) -> Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.supabase.db_ca_file {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| SyncError::new(ErrorKind::Config, format!("[supabase] db_ca_file {}: {e}", path.display())))?;
            for c in certs {
                roots.add(c).map_err(|e| SyncError::new(ErrorKind::Config, format!("[supabase] db_ca_file {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SyncError::new(ErrorKind::Config, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PgUpstream {
    pub fn new(cfg: &Config) -> Result<Self> {
        let config = cfg
            .upstream_pg_config()
            .ok_or_else(|| SyncError::new(ErrorKind::Config, "[supabase] db_url is not a valid connection string"))?;
        Ok(PgUpstream {
            config,
            timeout: cfg.supabase.request_timeout,
            tls: tls(cfg)?,
            schema: cfg.supabase.schema.clone(),
            writer: cfg.sync.clinic_id.clone(),
            conn: Mutex::new(None),
            replica_refused: AtomicBool::new(false),
        })
    }

    /// The open session, connecting first when there is none (or it broke).
    async fn session<'g>(&self, guard: &'g mut Option<Session>) -> Result<&'g mut Session> {
        if guard.as_ref().is_none_or(|s| s.client.is_closed()) {
            let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| SyncError::from_pg(CTX, &e))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *guard = Some(Session { client, replica: false, refused: false });
        }
        Ok(guard.as_mut().expect("connected above"))
    }

    /// Runs `f` on a connected client whose session is as `role` needs;
    /// drops the connection when the error says it is broken.
    async fn with_client<T>(
        &self,
        role: Role,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().await;
        let session = self.session(&mut guard).await?;
        let call = async {
            if session.switch(role).await? && !self.replica_refused.swap(true, Ordering::Relaxed) {
                tracing::info!("{REPLICA_REFUSED}");
            }
            f(&session.client).await
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(a) => a,
            Err(_) => {
                *guard = None;
                return Err(SyncError::new(
                    ErrorKind::Timeout,
                    format!("{CTX}: no answer within {} s (request_timeout_seconds); reconnecting", self.timeout.as_secs()),
                ));
            }
        };
        match answer {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = SyncError::from_pg(CTX, &e);
                // A statement timeout or a program limit leaves the
                // connection as good as it was.
                let too_much = matches!(err.kind, ErrorKind::TooLarge | ErrorKind::TooSlow);
                if e.as_db_error().is_none() || (err.is_transient() && !too_much) {
                    *guard = None;
                }
                Err(err)
            }
        }
    }

    /// The upstream's connection, for commands that run DDL (`init --upstream`).
    pub async fn run_batch(&self, sql: &str) -> Result<()> {
        self.with_client(Role::Default, async |c| c.batch_execute(sql).await).await
    }

    /// The `session_replication_role` of this connection's session, as the
    /// server reports it (diagnostics: the rules in the module header).
    pub async fn session_replication_role(&self) -> Result<String> {
        self.with_client(Role::Either, async |c| {
            c.query_one("SELECT current_setting('session_replication_role')", &[]).await.map(|r| r.get(0))
        })
        .await
    }

    /// Whether this role may keep `replica` for its session (the module
    /// header; `doctor` reports it): tries it, then resets the session.
    pub async fn may_keep_replica(&self) -> Result<bool> {
        self.with_client(Role::Apply, async |_| Ok(())).await?;
        let kept = self.conn.lock().await.as_ref().is_some_and(|s| s.replica);
        self.with_client(Role::Default, async |_| Ok(())).await?;
        Ok(kept)
    }

    /// Describes upstream tables (postgres mode only).
    pub async fn catalog(&self, tables: &[String]) -> Result<std::collections::BTreeMap<String, crate::catalog::Table>> {
        let mut guard = self.conn.lock().await;
        let session = self.session(&mut guard).await?;
        crate::catalog::load(&session.client, crate::error::Side::Upstream, &self.schema, tables).await
    }
}

impl Upstream for PgUpstream {
    async fn apply(&self, changes: &str) -> Result<Outcome> {
        let expected = super::count_elements(changes);
        let text: String = self
            .with_client(Role::Apply, async |c| {
                c.query_one("SELECT public.centrovision_sync_apply($1::text::jsonb, $2)::text", &[&changes, &self.writer])
                    .await
                    .map(|r| r.get(0))
            })
            .await?;
        parse_outcome(&text, expected)
    }

    async fn fetch(&self, table: &TableRef<'_>, ids: &[String]) -> Result<String> {
        // Arrays of json/jsonb go in their text form (see TableRef::json_arrays),
        // the rest as to_jsonb renders them.
        let overrides: Vec<String> =
            table.json_arrays().map(|c| format!("{}, _cvs_r.{}::text", quote_literal(c), quote_ident(c))).collect();
        let image = if overrides.is_empty() { "_cvs_r.*".to_string() } else { format!("to_jsonb(_cvs_r.*) || {}", object_sql(&overrides)) };
        let sql = format!(
            "SELECT coalesce(json_agg({image}), '[]')::text FROM (SELECT * FROM {} WHERE {} = ANY($1::text[]::{}[])) _cvs_r",
            qualified(&self.schema, table.name),
            quote_ident(table.pk),
            table.pk_type
        );
        self.with_client(Role::Either, async |c| c.query_one(&sql, &[&ids]).await.map(|r| r.get(0))).await
    }

    async fn health(&self) -> Result<()> {
        self.with_client(Role::Either, async |c| c.simple_query("SELECT 1").await.map(|_| ())).await
    }

    async fn contract_version(&self) -> Result<Option<i32>> {
        self.with_client(Role::Either, async |c| {
            let exists = c
                .query_one(
                    "SELECT to_regprocedure('public.centrovision_sync_version()') IS NOT NULL
                        AND to_regprocedure('public.centrovision_sync_apply(jsonb,text)') IS NOT NULL",
                    &[],
                )
                .await?
                .get::<_, bool>(0);
            if !exists {
                return Ok(None);
            }
            c.query_one("SELECT public.centrovision_sync_version()", &[]).await.map(|r| Some(r.get(0)))
        })
        .await
    }

    async fn bucket_hashes(&self, h: &HashRequest<'_>) -> Result<String> {
        self.with_client(Role::Either, async |c| {
            c.query_one(
                "SELECT public.centrovision_sync_bucket_hashes($1, $2, $3, $4, $5)::text",
                &[&h.schema, &h.table, &h.key_column, &h.cols, &h.buckets],
            )
            .await
            .map(|r| r.get(0))
        })
        .await
    }

    async fn row_hashes(&self, h: &HashRequest<'_>, wanted: &[i32]) -> Result<String> {
        self.with_client(Role::Either, async |c| {
            c.query_one(
                "SELECT public.centrovision_sync_row_hashes($1, $2, $3, $4, $5, $6)::text",
                &[&h.schema, &h.table, &h.key_column, &h.cols, &h.buckets, &wanted],
            )
            .await
            .map(|r| r.get(0))
        })
        .await
    }

    async fn changes(&self, req: &FeedRequest<'_>) -> Result<String> {
        let scope = req.scope.map(|s| s.to_string());
        self.with_client(Role::Either, async |c| {
            c.query_one(
                "SELECT public.centrovision_sync_changes($1, $2, $3, $4, $5, $6, $7::int, $8::text::timestamptz, $9::text::jsonb)::text",
                &[&self.writer, &req.schema, &req.tables, &req.prev, &req.target, &req.after, &(req.limit as i32), &req.since, &scope],
            )
            .await
            .map(|r| r.get(0))
        })
        .await
    }

    async fn conflicts(&self, q: &ConflictQuery<'_>) -> Result<String> {
        let tables = q.tables.map(|t| t.to_vec());
        self.with_client(Role::Either, async |c| {
            c.query_one(
                "SELECT public.centrovision_sync_conflicts($1, $2, $3::text::timestamptz, $4::int)::text",
                &[&q.schema, &tables, &q.since, &(q.limit as i32)],
            )
            .await
            .map(|r| r.get(0))
        })
        .await
    }

    async fn conflict_count(&self, since: Option<&str>) -> Result<i64> {
        self.with_client(Role::Either, async |c| {
            c.query_one("SELECT public.centrovision_sync_conflict_count($1, $2::text::timestamptz)", &[&self.schema, &since])
                .await
                .map(|r| r.get(0))
        })
        .await
    }

    async fn prune(&self) -> Result<String> {
        self.with_client(Role::Default, async |c| c.query_one("SELECT public.centrovision_sync_prune()::text", &[]).await.map(|r| r.get(0)))
            .await
    }

    async fn row_versions(&self, table: &str, keys: &[String], seen_in: Option<&str>) -> Result<String> {
        self.with_client(Role::Either, async |c| {
            c.query_one("SELECT public.centrovision_sync_row_versions($1, $2, $3, $4)::text", &[&self.schema, &table, &keys, &seen_in])
                .await
                .map(|r| r.get(0))
        })
        .await
    }
}
